"""REST v4 writes to a repository: the commits API (several files in one commit), branch
creation and the repository tree, as GitLab answers them.

``POST /projects/:id/repository/commits`` follows GitLab's ``Commits::CreateService``
and ``Files::MultiService``: the token's user must be allowed to push to ``branch``
(Developer and up, Maintainer on a protected branch; else ``403 Forbidden - You are not
allowed to push into this branch``); ``start_branch`` / ``start_sha`` (mutually
exclusive) start a new branch, and naming a branch that already exists with a start
point other than its head is refused (``A branch called '...' already exists. Switch to
that branch in order to make changes``); a ``create`` of an existing file and an
``update``, ``delete`` or ``move`` of a missing one are 400 with GitLab's messages. The
commit is written with the real ``git`` into the project's bare repository and the
branch moves only if nobody moved it meanwhile (``update-ref`` with the old value).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
from pathlib import Path
from typing import Any

from . import entities, gitrepo
from .api_repo import BranchesHandler, RepoHandler
from .store import DEVELOPER, Project, User, utcnow
from .web import ApiError, bad_param, message, not_found

ACTIONS = ("create", "update", "delete", "move", "chmod")
MAX_PATH = 4096
_write_lock = threading.Lock()  # one writer at a time, as Gitaly's per-ref locking


def _file_path_ok(path: Any) -> bool:
    if not isinstance(path, str) or not path or len(path) > MAX_PATH or "\x00" in path:
        return False
    parts = path.strip("/").split("/")
    return all(p not in ("", ".", "..") for p in parts) and parts[0] != ".git"


def _clean(path: str) -> str:
    return path.strip("/")  # GitLab accepts "/foo.txt" for "foo.txt" (its own example)


def _forbidden_push() -> ApiError:
    return message(403, "403 Forbidden - You are not allowed to push into this branch")


class _Refused(Exception):
    """A 400 from inside the git work (GitLab's message)."""


def _blob_at(repo: Path, commit: str | None, path: str) -> tuple[str, str] | None:
    """(mode, blob sha) of a file at ``commit``, None if there is none."""
    if not commit:
        return None
    try:
        out = gitrepo._git(repo, "ls-tree", "-z", commit, "--", path,
                           env={"GIT_LITERAL_PATHSPECS": "1"})
    except gitrepo.GitError:
        return None
    for entry in out.split("\0"):
        meta, _, name = entry.partition("\t")
        fields = meta.split()
        if name == path and len(fields) == 3 and fields[1] == "blob":
            return fields[0], fields[2]
    return None


def _content(action: dict[str, Any], index: int) -> bytes:
    content = action.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise bad_param(f"actions[{index}][content]", "is invalid")
    if action.get("encoding", "text") == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, {"message": "Invalid base64 content"}) from None
    return content.encode()


def write_commit(repo: Path, branch: str, base: str | None, old_head: str | None,
                 actions: list[dict[str, Any]], msg: str, author: tuple[str, str]) -> str:
    """Apply ``actions`` on ``base`` and move ``branch`` from ``old_head`` (None: create)."""
    files: dict[str, gitrepo.FileValue] = {}
    for a in actions:
        path, kind = _clean(a["file_path"]), a["action"]
        current = _blob_at(repo, base, path)
        if kind == "create" and current:
            raise _Refused("A file with this name already exists")
        if kind in ("update", "delete", "chmod") and not current:
            raise _Refused("A file with this name doesn't exist")
        if kind == "move":
            previous = _clean(a["previous_path"])
            old = _blob_at(repo, base, previous)
            if not old:
                raise _Refused("A file with this name doesn't exist")
            if current:
                raise _Refused("A file with this name already exists")
            files[previous] = None
            if a.get("content") is None:
                files[path] = _git_blob(repo, old[1], old[0])
                continue
        if kind == "delete":
            files[path] = None
        elif kind == "chmod":
            data = _git_blob(repo, current[1], "100644")  # type: ignore[index]
            files[path] = gitrepo.Executable(data) if a.get("execute_filemode") else data
        else:
            files[path] = a["_data"]
    return _commit(repo, branch, files, msg, base, old_head, author)


def _git_blob(repo: Path, sha: str, mode: str) -> gitrepo.FileValue:
    data = gitrepo._git_bytes(repo, "cat-file", "blob", sha)
    if mode == "120000":
        return gitrepo.Symlink(data.decode())
    return gitrepo.Executable(data) if mode == "100755" else data


def _commit(repo: Path, branch: str, files: dict[str, gitrepo.FileValue], msg: str,
            base: str | None, old_head: str | None, author: tuple[str, str]) -> str:
    with _write_lock:
        head = gitrepo.rev_parse(repo, f"refs/heads/{branch}")
        if head != old_head:
            raise _Refused("Could not update branch: it moved meanwhile")
        return gitrepo.commit_files(repo, branch, files, msg, base, author=author)


class CommitsHandler(RepoHandler):
    async def post(self, ref: str) -> None:
        viewer = self.require_user()
        project = self.readable_project(ref, viewer)
        params = self.body_params()
        missing = [n for n in ("branch", "commit_message", "actions") if not params.get(n)]
        if missing:
            raise ApiError(400, {"error": ", ".join(f"{m} is missing" for m in missing)})
        if params.get("start_branch") and params.get("start_sha"):
            raise ApiError(400, {"error": "start_branch, start_sha are mutually exclusive"})
        branch = str(params["branch"])
        if not gitrepo.valid_ref(branch):
            raise message(400, "Branch name is invalid")
        actions = self._actions(params["actions"])
        if not self._can_push(viewer, project, branch):
            raise _forbidden_push()
        head = await gitrepo.resolve(project.repo_dir, f"refs/heads/{branch}")
        base = await self._start(project, branch, head, params)
        author = (viewer.name, viewer.email)
        try:
            sha = await asyncio.to_thread(write_commit, project.repo_dir, branch, base, head,
                                          actions, str(params["commit_message"]), author)
        except _Refused as e:
            raise message(400, str(e)) from None
        except gitrepo.GitError:  # e.g. a file where the path needs a directory
            raise message(400, "The commit could not be created") from None
        project.last_activity_at = utcnow()
        found = (await gitrepo.commits(project.repo_dir, [sha]))[sha]
        data = entities.commit(self.store, project, found)
        data.update({"stats": await gitrepo.stats(project.repo_dir, sha), "status": None,
                     "project_id": project.id, "last_pipeline": None})
        self.write_json(data, status=201)

    def _can_push(self, viewer: User, project: Project, branch: str) -> bool:
        return self.store.project_access(viewer, project) >= self.store.push_level(project,
                                                                                    branch)

    def _actions(self, raw: Any) -> list[dict[str, Any]]:
        if not isinstance(raw, list) or not raw:
            raise bad_param("actions", "is invalid")
        actions = []
        for i, a in enumerate(raw):
            if not isinstance(a, dict):
                raise bad_param(f"actions[{i}]", "is invalid")
            if a.get("action") not in ACTIONS:
                raise bad_param(f"actions[{i}][action]")
            if not a.get("file_path"):
                raise ApiError(400, {"error": f"actions[{i}][file_path] is missing"})
            if a.get("encoding", "text") not in ("text", "base64"):
                raise bad_param(f"actions[{i}][encoding]")
            paths = [a["file_path"]] + ([a.get("previous_path")] if a["action"] == "move"
                                        else [])
            if not all(_file_path_ok(p) for p in paths):
                raise ApiError(400, {"error": f"actions[{i}][file_path] should be a valid "
                                              "file path"})
            a = dict(a)
            if a["action"] in ("create", "update") or (a["action"] == "move"
                                                       and a.get("content") is not None):
                a["_data"] = _content(a, i)
            actions.append(a)
        return actions

    async def _start(self, project: Project, branch: str, head: str | None,
                     params: dict[str, Any]) -> str:
        """The commit the new one goes on top of, as GitLab's CreateService decides."""
        start_branch, start_sha = params.get("start_branch"), params.get("start_sha")
        if start_sha:
            start = await gitrepo.resolve(project.repo_dir, str(start_sha))
            if start is None or len(str(start_sha)) < 7:
                raise message(400, f"Invalid reference name: {start_sha}")
            if head is not None and start != head:
                raise _exists(branch)
            return start
        start_branch = str(start_branch or branch)
        start = (await gitrepo.resolve(project.repo_dir, f"refs/heads/{start_branch}")
                 if gitrepo.valid_ref(start_branch) else None)
        if start is None:
            raise message(400, "You can only create or edit files when you are on a branch")
        if head is not None and start_branch != branch and start != head:
            raise _exists(branch)
        return start


def _exists(branch: str) -> ApiError:
    return message(400, f"A branch called '{branch}' already exists. Switch to that branch "
                        "in order to make changes")


class CreateBranchHandler(BranchesHandler):
    """GET (BranchesHandler) and POST /projects/:id/repository/branches (branch, ref):
    creating one takes Developer and up."""

    async def post(self, ref: str) -> None:
        viewer = self.require_user()
        project = self.readable_project(ref, viewer)
        params = self.body_params()
        missing = [n for n in ("branch", "ref") if not params.get(n)]
        if missing:
            raise ApiError(400, {"error": ", ".join(f"{m} is missing" for m in missing)})
        name, start = str(params["branch"]), str(params["ref"])
        if self.store.project_access(viewer, project) < DEVELOPER:
            raise message(403, "403 Forbidden")
        if not gitrepo.valid_ref(name):
            raise message(400, "Branch name is invalid")
        target = await gitrepo.resolve(project.repo_dir, start)
        if target is None:
            raise message(400, "Invalid reference name: " + start)
        try:
            await asyncio.to_thread(_create_ref, project.repo_dir, name, target)
        except _Refused as e:
            raise message(400, str(e)) from None
        branch = next(b for b in await gitrepo.refs(project.repo_dir, "heads") if b.name == name)
        self.write_json((await self._branch_json(project, viewer, [branch]))[0], status=201)


def _create_ref(repo: Path, name: str, target: str) -> None:
    with _write_lock:
        try:  # the empty old value: only if the branch does not exist yet
            gitrepo._git(repo, "update-ref", f"refs/heads/{name}", target, "0" * 40)
        except gitrepo.GitError:
            raise _Refused("Branch already exists") from None


class TreeHandler(RepoHandler):
    """GET /projects/:id/repository/tree (ref, path, recursive; paginated)."""

    async def get(self, ref: str) -> None:
        viewer = self.authenticate()
        project = self.readable_project(ref, viewer)
        commit = await gitrepo.resolve(project.repo_dir, self.get_query_argument(
            "ref", project.default_branch))
        if commit is None:
            raise not_found("Tree")
        path = self.get_query_argument("path", "").strip("/")
        args = ["ls-tree", "-z", "-r", "-t"] if self.bool_arg("recursive") else ["ls-tree", "-z"]
        target = f"{commit}:{path}" if path else commit
        code, out = await gitrepo.run_git(project.repo_dir, *args, target)
        if code != 0:
            raise not_found("Tree")
        items = []
        for entry in out.decode(errors="surrogateescape").split("\0"):
            meta, _, name = entry.partition("\t")
            fields = meta.split()
            if len(fields) != 3:
                continue
            full = f"{path}/{name}" if path else name
            items.append({"id": fields[2], "name": full.rsplit("/", 1)[-1], "type": fields[1],
                          "path": full, "mode": fields[0]})
        self.write_json(self.paginate(items))


_REPO = r"/api/v4/projects/([^/]+)/repository"
HANDLERS = [
    (rf"{_REPO}/commits", CommitsHandler),
    (rf"{_REPO}/branches", CreateBranchHandler),
    (rf"{_REPO}/tree", TreeHandler),
]
