"""Save a running server's changes back to GitLab, from the hub (issue 13).

The runner never gets a credential that can push: the hub reads the server's files
through its Jupyter contents API with a JupyterHub token scoped to that one server
(deleted when the save ends), compares them with the commit the server was launched
from (GitLab's tree API gives each file's git blob sha, so hashing what the server
returns tells changed from unchanged), and commits the difference with the user's own
GitLab token through GitLab's commits API.

Nothing the container says is trusted beyond file contents: every path is checked
(:func:`checked_path`), every read is capped (:class:`Limits`), and a listing that is
cut short never turns into deletions. Hidden paths (a part starting with ``.``) are
outside the save: Jupyter does not list them, so they can be neither read nor deleted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Integer
from traitlets.config import LoggingConfigurable

from booklab_spawner import validate as check
from booklab_spawner.exceptions import BooklabError, GitLabError, InvalidInput

from .save_gitlab import SaveGitLab

log = logging.getLogger(__name__)

MAX_PATH = 1024  # bytes of one path (GitLab's own limit is larger)
MAX_MESSAGE = 10_000
TIMEOUT = 30  # s per request to the notebook server
TREE_MODES = ("100644", "100755")  # regular files; links and submodules stay as they are


class SaveError(BooklabError):
    """A save refused or failed; ``str()`` is for the user, ``status`` for HTTP."""

    def __init__(self, message: str, status: int = 400):
        self.status = status
        super().__init__(message)


class UnsafePath(SaveError):
    pass


class ServerRefused(SaveError):
    """The notebook server answered an HTTP error; ``code`` is its status."""

    def __init__(self, message: str, code: int):
        self.code = code
        super().__init__(message, 502)


class BooklabSaver(LoggingConfigurable):
    """Limits of "Save to GitLab" (config.yml ``save.*``)."""

    max_file_size = Integer(10 * 1024 ** 2, config=True, help="""Largest file (bytes) a
        save reads from a server and commits; a larger changed file stops the save with a
        message naming it.""")
    max_total_size = Integer(50 * 1024 ** 2, config=True, help="""Most bytes one save reads
        from a server in all.""")
    max_files = Integer(2000, config=True, help="""Most files (and folders) one save lists on
        a server; a server with more cannot be saved (nothing is committed).""")
    token_lifetime = Integer(300, config=True, help="""Seconds the server-scoped token a
        save reads with may live at most (it is deleted as soon as the save ends).""")

    def limits(self) -> Limits:
        return Limits(self.max_file_size, self.max_total_size, self.max_files)


@dataclass(frozen=True)
class Limits:
    file_size: int
    total_size: int
    files: int


@dataclass
class Change:
    path: str
    action: str  # create, update, delete
    data: bytes | None = None

    def public(self) -> dict[str, Any]:
        return {"path": self.path, "action": self.action,
                "size": len(self.data) if self.data is not None else None}


@dataclass
class Launched:
    """What the server started from, from its job record."""
    project: str
    project_id: str
    sha: str


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # hidden or not regular files


# -- paths -------------------------------------------------------------------------
def checked_path(path: Any) -> str:
    """A repository-relative file path the server named, or ``UnsafePath``."""
    if not isinstance(path, str) or not path:
        raise UnsafePath("The server named a file without a path")
    shown = json.dumps(path[:80])
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise UnsafePath(f"The server named a path that is too long: {shown}")
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in path) or "\\" in path:
        raise UnsafePath(f"The server named a path with a control character: {shown}")
    if path.startswith("/"):
        raise UnsafePath(f"The server named an absolute path: {shown}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"The server named a path outside the repository: {shown}")
    if any(p.lower() == ".git" for p in parts):
        raise UnsafePath(f"The server named a path inside .git: {shown}")
    return path


def hidden(path: str) -> bool:
    return any(p.startswith(".") for p in path.split("/"))


def blob_sha(data: bytes) -> str:
    """git's object id of a blob with this content (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def default_branch(user: str, server: str) -> str:
    return f"booklab/{user}/{server or 'default'}"


def checked_branch(name: Any) -> str:
    try:
        value = check.ref(name)
    except InvalidInput as e:
        raise SaveError(str(e)) from None
    if value.startswith("-") or len(value) > 200 or value.upper() == "HEAD":
        raise SaveError("Invalid branch name")
    return value


def checked_message(message: Any, default: str) -> str:
    if message in (None, ""):
        return default
    if not isinstance(message, str) or len(message) > MAX_MESSAGE or "\x00" in message:
        raise SaveError(f"The commit message must be text of at most {MAX_MESSAGE} characters")
    return message


# -- the server's files (untrusted) ----------------------------------------------------
class ServerFiles:
    """Reads a notebook server's files through its contents API, capped."""

    def __init__(self, base_url: str, token: str, limits: Limits):
        self.base = base_url.rstrip("/") + "/api/contents"
        self._token = token
        self.limits = limits
        self.read = 0
        self.listed = 0

    async def _get(self, path: str, query: str, cap: int) -> dict:
        chunks: list[bytes] = []
        size = 0

        too_big = SaveError(f"{json.dumps(path[:80] or '/')} on the server is larger than "
                            f"the save limit ({self.limits.file_size} bytes)", 413)

        def collect(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > cap:
                raise too_big  # tornado drops the connection: nothing more is read
            chunks.append(chunk)

        url = f"{self.base}/{quote(path)}?{query}"
        req = HTTPRequest(url, headers={"Authorization": f"token {self._token}"},
                          request_timeout=TIMEOUT, follow_redirects=False,
                          streaming_callback=collect)
        try:
            await AsyncHTTPClient().fetch(req)
        except HTTPClientError as e:
            if size > cap:
                raise too_big from None
            raise ServerRefused(f"The server answered {e.code} for "
                                f"{json.dumps(path[:80] or '/')}", e.code) from None
        except OSError:
            if size > cap:
                raise too_big from None
            raise SaveError("The server did not answer: is it running?", 502) from None
        self.read += size
        try:
            data = json.loads(b"".join(chunks))
        except ValueError:
            raise SaveError("The server's answer was not JSON", 502) from None
        if not isinstance(data, dict):
            raise SaveError("The server's answer was not a contents model", 502)
        return data

    async def walk(self) -> list[tuple[str, int | None]]:
        """Every visible file as (path, size the server claims), breadth first."""
        files: list[tuple[str, int | None]] = []
        folders = [""]
        while folders:
            folder = folders.pop(0)
            listing = await self._get(folder, "content=1&type=directory", 1024 * 1024 * 8)
            entries = listing.get("content")
            if not isinstance(entries, list):
                raise SaveError(f"The server did not list {json.dumps(folder or '/')}", 502)
            for entry in entries:
                self.listed += 1
                if self.listed > self.limits.files:
                    raise SaveError(f"The server has more than {self.limits.files} files and "
                                    "folders: too many to save (nothing was committed)", 413)
                if not isinstance(entry, dict):
                    raise SaveError("The server listed something that is not a file", 502)
                path = checked_path(entry.get("path"))
                if path.rsplit("/", 1)[0] != folder and folder:
                    raise UnsafePath(f"The server listed {json.dumps(path[:80])} in "
                                     f"{json.dumps(folder[:80])}")
                if hidden(path):
                    continue
                kind = entry.get("type")
                if kind == "directory":
                    folders.append(path)
                elif kind in ("file", "notebook"):
                    size = entry.get("size")
                    files.append((path, size if isinstance(size, int) else None))
                else:
                    raise SaveError(f"The server listed {json.dumps(path[:80])} as {kind!r}",
                                    502)
        return files

    async def content(self, path: str) -> bytes:
        """A file's exact bytes (notebooks too: as stored, not re-serialized)."""
        left = self.limits.total_size - self.read
        if left <= 0:
            raise self._too_much()
        # base64 grows 4/3, plus the model around it
        cap = min(self.limits.file_size, left) * 4 // 3 + 64 * 1024
        model = await self._get(path, "content=1&type=file&format=base64", cap)
        raw = model.get("content")
        if model.get("format") != "base64" or not isinstance(raw, str):
            raise SaveError(f"The server did not send {json.dumps(path[:80])} as a file", 502)
        try:
            # Jupyter sends base64 in lines of 76 (base64.encodebytes)
            data = base64.b64decode("".join(raw.split()), validate=True)
        except ValueError:
            raise SaveError(f"The server sent {json.dumps(path[:80])} badly encoded",
                            502) from None
        if len(data) > self.limits.file_size:
            raise SaveError(f"{json.dumps(path[:80])} is larger than the save limit "
                            f"({self.limits.file_size} bytes)", 413)
        return data

    async def exists(self, path: str) -> bool:
        """Whether the server has ``path`` even if its listing left it out (Jupyter's
        ``hide_globs``: ``*.pyc``, ``__pycache__``, ``*~``, ...): 404 means gone."""
        try:
            await self._get(path, "content=0", 64 * 1024)
        except ServerRefused as e:
            if e.code == 404:
                return False
            raise
        return True

    def _too_much(self) -> SaveError:
        return SaveError(f"The server's files are larger than the save limit "
                         f"({self.limits.total_size} bytes in all)", 413)


# -- comparing ------------------------------------------------------------------------
Tree = dict[str, tuple[str, str]]  # path -> (mode, blob sha)


async def server_snapshot(files: ServerFiles) -> dict[str, bytes]:
    found = {}
    for path, size in await files.walk():
        if size is not None and size > files.limits.file_size:
            raise SaveError(f"{json.dumps(path[:80])} is larger than the save limit "
                            f"({files.limits.file_size} bytes)", 413)
        data = await files.content(path)
        if path.endswith(".ipynb"):
            try:
                json.loads(data)
            except ValueError:
                raise SaveError(f"{json.dumps(path[:80])} is not valid notebook JSON: save "
                                "it in JupyterLab first", 400) from None
        found[path] = data
    return found


def diff(server: dict[str, bytes], tree: Tree) -> Plan:
    """What turns ``tree`` into the server's files."""
    plan = Plan()
    for path, data in sorted(server.items()):
        known = tree.get(path)
        if known is None:
            plan.changes.append(Change(path, "create", data))
        elif known[0] not in TREE_MODES:
            plan.skipped.append(path)  # a symlink or submodule in git: left alone
        elif known[1] != blob_sha(data):
            plan.changes.append(Change(path, "update", data))
    for path, (mode, _) in sorted(tree.items()):
        if mode in TREE_MODES and not hidden(path) and path not in server:
            plan.changes.append(Change(path, "delete"))
    return plan


def rebase(server: dict[str, bytes], launched: Tree, head: Tree) -> Plan | None:
    """The changes to commit on a branch that moved since the launch (``head``), or None
    when the user and the branch both changed one file (a conflict)."""
    mine = {c.path for c in diff(server, launched).changes}
    theirs = {p for p in set(launched) | set(head) if launched.get(p) != head.get(p)}
    if mine & theirs:
        # both touched it: fine only if they ended up the same
        for path in mine & theirs:
            now = head.get(path)
            data = server.get(path)
            if not ((data is None and now is None)
                    or (data is not None and now is not None and now[1] == blob_sha(data))):
                return None
    plan = diff(server, head)
    # keep what only the branch changed: never revert it
    plan.changes = [c for c in plan.changes if c.path in mine]
    return plan


def actions(plan: Plan) -> list[dict[str, Any]]:
    out = []
    for c in plan.changes:
        action: dict[str, Any] = {"action": c.action, "file_path": c.path}
        if c.data is not None:
            try:
                action.update(content=c.data.decode("utf-8"), encoding="text")
            except UnicodeDecodeError:
                action.update(content=base64.b64encode(c.data).decode(), encoding="base64")
        out.append(action)
    return out


async def confirm_deletions(files: ServerFiles, plan: Plan) -> Plan:
    """Keep a deletion only if the server says the file is gone: a file its listing
    hides is left alone (and named in ``skipped``), never deleted from git."""
    kept = []
    for change in plan.changes:
        if change.action == "delete" and await files.exists(change.path):
            plan.skipped.append(change.path)
            continue
        kept.append(change)
    plan.changes = kept
    return plan


# -- one save ----------------------------------------------------------------------
@dataclass
class SaveResult:
    branch: str
    branch_url: str
    commit: str | None
    commit_url: str | None
    files: list[dict[str, Any]]
    new_branch: bool
    conflict: bool
    message: str

    def public(self) -> dict[str, Any]:
        return self.__dict__.copy()


class SaveRun:
    """One save or preview of one server: reads it, compares, commits."""

    def __init__(self, gitlab: SaveGitLab, files: ServerFiles, launched: Launched):
        self.gitlab, self.files, self.launched = gitlab, files, launched

    async def preview(self) -> tuple[Plan, dict[str, bytes], Tree]:
        server = await server_snapshot(self.files)
        tree = await self.gitlab.tree(self.launched.project_id, self.launched.sha)
        plan = await confirm_deletions(self.files, diff(server, tree))
        # files the listing hid stay out of the save, also on a branch that moved
        unlisted = {p for p in plan.skipped if p not in server}
        return plan, server, {p: v for p, v in tree.items() if p not in unlisted}

    async def save(self, branch: str, message: str) -> SaveResult:
        plan, server, launched_tree = await self.preview()
        if not plan.changes:
            return SaveResult(branch, "", None, None, [], False, False,
                              "Nothing changed since the launch: nothing to save")
        head = await self.gitlab.branch(self.launched.project_id, branch)
        if head is None:
            try:
                return await self._commit(branch, message, plan,
                                          start_sha=self.launched.sha, new=True)
            except GitLabError as e:
                head = await self.gitlab.branch(self.launched.project_id, branch)
                if e.status != 400 or head is None:
                    raise
                # made meanwhile (another save, a push): as for a branch that moved
        return await self._onto(branch, message, plan, server, launched_tree, head)

    async def _onto(self, branch: str, message: str, plan: Plan, server: dict[str, bytes],
                    launched_tree: Tree, head: dict) -> SaveResult:
        pid = self.launched.project_id
        head_sha = head["commit"]["id"]
        if head_sha != self.launched.sha:
            on_top = rebase(server, launched_tree, await self.gitlab.tree(pid, head_sha))
            if on_top is not None and not on_top.changes:
                return SaveResult(branch, head.get("web_url", ""), head_sha,
                                  head["commit"].get("web_url"), [], False, False,
                                  f"Branch {branch} already has these changes")
            if on_top is not None:
                try:
                    return await self._commit(branch, message, on_top, start_sha=None,
                                              new=False)
                except GitLabError as e:
                    if e.status != 400:  # 403 and the like: the user's answer
                        raise
                    log.info("GitLab refused the commit on top of %s: %s", branch, e)
            return await self._elsewhere(branch, message, plan)
        return await self._commit(branch, message, plan, start_sha=None, new=False)

    async def _elsewhere(self, branch: str, message: str, plan: Plan) -> SaveResult:
        """A conflict: the changes go to a new branch from the launched commit."""
        other = f"{branch}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        result = await self._commit(other, message, plan, start_sha=self.launched.sha,
                                    new=True)
        result.conflict = True
        result.message = (f"Branch {branch} changed since this server started and the "
                          f"changes could not go on top: saved to a new branch {other}")
        return result

    async def _commit(self, branch: str, message: str, plan: Plan, start_sha: str | None,
                      new: bool) -> SaveResult:
        data: dict[str, Any] = {"branch": branch, "commit_message": message,
                                "actions": actions(plan)}
        if start_sha:
            data["start_sha"] = start_sha
        made = await self.gitlab.create_commit(self.launched.project_id, data)
        files = [c.public() for c in plan.changes]
        return SaveResult(branch, self.gitlab.branch_url(self.launched.project, branch),
                          made.get("id"), made.get("web_url"), files, new, False,
                          f"Saved {len(files)} file(s) to {'new ' if new else ''}branch "
                          f"{branch}")
