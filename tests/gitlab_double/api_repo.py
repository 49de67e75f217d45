"""REST v4 repository endpoints (branches, tags, commits) and deploy keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from . import entities, gitrepo, sshkeys
from .gitrepo import Ref
from .store import MAINTAINER, DeployKey, Project, User
from .web import ApiError, ApiHandler, message, not_found


def _search(refs: list[Ref], pattern: str) -> list[Ref]:
    """GitLab's ref search: substring, `^prefix` or `suffix$`, case-insensitive."""
    if not pattern:
        return refs
    low = pattern.lower()
    if low.startswith("^"):
        return [r for r in refs if r.name.lower().startswith(low[1:])]
    if low.endswith("$"):
        return [r for r in refs if r.name.lower().endswith(low[:-1])]
    return [r for r in refs if low in r.name.lower()]


def _find(refs: list[Ref], name: str) -> Ref | None:
    return next((r for r in refs if r.name == name), None)


class RepoHandler(ApiHandler):
    async def _branch_json(self, project: Project, viewer: User | None,
                           branches: list[Ref]) -> list[dict[str, Any]]:
        default_sha = await gitrepo.resolve(project.repo_dir,
                                            f"refs/heads/{project.default_branch}")
        merged = await gitrepo.merged_into(project.repo_dir, default_sha) if default_sha else set()
        access = self.store.project_access(viewer, project)
        result = []
        for b in branches:
            is_default = b.name == project.default_branch
            result.append(entities.branch(
                self.store, project, b, merged=b.name in merged and not is_default,
                can_push=access >= self.store.push_level(project, b.name)))
        return result


class BranchesHandler(RepoHandler):
    async def get(self, ref: str) -> None:
        viewer = self.authenticate()
        project = self.readable_project(ref, viewer)
        branches = _search(await gitrepo.refs(project.repo_dir, "heads"),
                           self.get_query_argument("search", ""))
        order = self.choice_arg("sort", ("name_asc", "updated_asc", "updated_desc"), "name_asc")
        if order == "name_asc":
            branches.sort(key=lambda b: b.name)
        else:
            branches.sort(key=lambda b: b.commit.committed_date, reverse=order == "updated_desc")
        page = self.paginate(branches)
        self.write_json(await self._branch_json(project, viewer, page))


class BranchHandler(RepoHandler):
    async def get(self, ref: str, name: str) -> None:
        viewer = self.authenticate()
        project = self.readable_project(ref, viewer)
        branch = _find(await gitrepo.refs(project.repo_dir, "heads"), name)
        if branch is None:
            raise not_found("Branch")
        self.write_json((await self._branch_json(project, viewer, [branch]))[0])


class TagsHandler(RepoHandler):
    async def get(self, ref: str) -> None:
        viewer = self.authenticate()
        project = self.readable_project(ref, viewer)
        tags = _search(await gitrepo.refs(project.repo_dir, "tags"),
                       self.get_query_argument("search", ""))
        order = self.choice_arg("order_by", ("name", "updated", "version"), "updated")
        desc = self.choice_arg("sort", ("asc", "desc"), "desc") == "desc"
        if order == "updated":
            tags.sort(key=lambda t: (t.commit.committed_date, t.name), reverse=desc)
        else:
            tags.sort(key=lambda t: t.name, reverse=desc)
        self.write_json([entities.tag(self.store, project, t) for t in self.paginate(tags)])


class TagHandler(RepoHandler):
    async def get(self, ref: str, name: str) -> None:
        viewer = self.authenticate()
        project = self.readable_project(ref, viewer)
        tag = _find(await gitrepo.refs(project.repo_dir, "tags"), name)
        if tag is None:
            raise not_found("Tag")
        self.write_json(entities.tag(self.store, project, tag))


class CommitHandler(RepoHandler):
    async def get(self, ref: str, sha: str) -> None:
        viewer = self.authenticate()
        project = self.readable_project(ref, viewer)
        resolved = await gitrepo.resolve(project.repo_dir, sha)
        if resolved is None:
            raise not_found("Commit")
        found = (await gitrepo.commits(project.repo_dir, [resolved]))[resolved]
        data = entities.commit(self.store, project, found)
        data.update({"stats": await gitrepo.stats(project.repo_dir, resolved), "status": None,
                     "project_id": project.id, "last_pipeline": None})
        self.write_json(data)


# -- deploy keys --------------------------------------------------------------
def _already_taken() -> ApiError:
    return ApiError(400, {"message": {"deploy_key.fingerprint_sha256": ["has already been taken"]}})


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


class DeployKeysBase(ApiHandler):
    def maintained_project(self, ref: str) -> tuple[User, Project]:
        """Deploy keys need a signed-in Maintainer or Owner."""
        viewer = self.require_user()
        project = self.visible_project(ref, viewer)
        if self.store.project_access(viewer, project) < MAINTAINER:
            raise message(403, "403 Forbidden")
        return viewer, project

    def linked_key(self, project: Project, key_id: str) -> tuple[DeployKey, bool]:
        link = self.store.key_links.get((project.id, int(key_id)))
        if link is None:
            raise not_found("Deploy Key")
        return self.store.deploy_keys[int(key_id)], link


class DeployKeysHandler(DeployKeysBase):
    def get(self, ref: str) -> None:
        _, project = self.maintained_project(ref)
        keys = self.paginate(sorted(self.store.project_keys(project), key=lambda kp: kp[0].id))
        self.write_json([entities.deploy_key(k, push) for k, push in keys])

    def post(self, ref: str) -> None:
        viewer, project = self.maintained_project(ref)
        params = self.body_params()
        missing = [name for name in ("title", "key") if not params.get(name)]
        if missing:
            raise ApiError(400, {"error": ", ".join(f"{m} is missing" for m in missing)})
        try:
            parsed = sshkeys.parse(str(params["key"]))
        except sshkeys.InvalidKey:
            raise ApiError(400, {"message": {
                "deploy_key.key": ["is invalid"],
                "deploy_key.fingerprint_sha256": ["cannot be generated"]}}) from None
        can_push = _truthy(params.get("can_push", False))
        with self.store.lock:
            key = self._reuse_or_create(viewer, project, parsed, str(params["title"]),
                                        params.get("expires_at"))
            self.store.key_links[(project.id, key.id)] = can_push
        self.write_json(entities.deploy_key(key, can_push), status=201)

    def _reuse_or_create(self, viewer: User, project: Project, parsed: sshkeys.PublicKey,
                         title: str, expires_at: Any) -> DeployKey:
        """A key already in GitLab is joined to this project only if the user
        maintains a project that has it, as GitLab does."""
        existing = self.store.key_by_fingerprint(parsed.fingerprint_sha256)
        if existing is not None:
            elsewhere = self.store.key_projects(existing)
            if project in elsewhere or not any(
                    self.store.project_access(viewer, p) >= MAINTAINER for p in elsewhere):
                raise _already_taken()
            return existing
        key = DeployKey(id=self.store.next_id("key"), title=title, key=parsed.text,
                        fingerprint=parsed.fingerprint_md5,
                        fingerprint_sha256=parsed.fingerprint_sha256, user_id=viewer.id,
                        expires_at=_parse_time(expires_at))
        self.store.deploy_keys[key.id] = key
        return key


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, {"error": "expires_at is invalid"}) from None


class DeployKeyHandler(DeployKeysBase):
    def get(self, ref: str, key_id: str) -> None:
        _, project = self.maintained_project(ref)
        key, can_push = self.linked_key(project, key_id)
        self.write_json(entities.deploy_key(key, can_push))

    def delete(self, ref: str, key_id: str) -> None:
        _, project = self.maintained_project(ref)
        key, _ = self.linked_key(project, key_id)
        with self.store.lock:
            del self.store.key_links[(project.id, key.id)]
            if not self.store.key_projects(key):  # used nowhere else: gone for good
                del self.store.deploy_keys[key.id]
        self.set_status(204)
        self.finish()


_ID = r"([^/]+)"
_REPO = rf"/api/v4/projects/{_ID}/repository"
# GitLab's routes take a branch, tag or commit ref as one path segment
# (NO_SLASH_URL_PART_REGEX): a ref with a slash must come URL-encoded, else 404
_REF = r"([^/]+)"
HANDLERS = [
    (rf"{_REPO}/branches", BranchesHandler),
    (rf"{_REPO}/branches/{_REF}", BranchHandler),
    (rf"{_REPO}/tags", TagsHandler),
    (rf"{_REPO}/tags/{_REF}", TagHandler),
    (rf"{_REPO}/commits/{_REF}", CommitHandler),
    (rf"/api/v4/projects/{_ID}/deploy_keys", DeployKeysHandler),
    (rf"/api/v4/projects/{_ID}/deploy_keys/(\d+)", DeployKeyHandler),
]
