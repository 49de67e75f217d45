"""REST v4: the current user, version, projects, groups and memberships."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from . import entities
from .store import (
    ACCESS_LEVELS,
    GUEST,
    MAINTAINER,
    OWNER,
    SHARE_LEVELS,
    VISIBILITIES,
    Group,
    Project,
    Share,
    User,
)
from .web import ApiError, ApiHandler, bad_param, message, not_found

PROJECT_ORDER: dict[str, Callable[[Project], Any]] = {
    "id": lambda p: p.id,
    "name": lambda p: p.name.lower(),
    "path": lambda p: p.path.lower(),
    "created_at": lambda p: p.created_at,
    "updated_at": lambda p: p.last_activity_at,
    "last_activity_at": lambda p: p.last_activity_at,
}
GROUP_ORDER: dict[str, Callable[[Group], Any]] = {
    "name": lambda g: g.name.lower(),
    "path": lambda g: g.path.lower(),
    "id": lambda g: g.id,
}
GITLAB_VERSION = "17.4.0"


class UserHandler(ApiHandler):
    read_scopes = ("api", "read_api", "read_user")

    def get(self) -> None:
        viewer = self.require_user()
        self.write_json(entities.user(self.store, viewer, private=True))


class VersionHandler(ApiHandler):
    read_scopes = ("api", "read_api", "read_user")

    def get(self) -> None:
        self.require_user()
        self.write_json({"version": GITLAB_VERSION, "revision": "0double0", "kas": {
            "enabled": False, "externalUrl": None, "version": None}, "enterprise": False})


class ProjectsHandler(ApiHandler):
    def get(self) -> None:
        viewer = self.authenticate()
        projects = self._filter(viewer, [p for p in list(self.store.projects.values())
                                         if self.store.can_see_project(viewer, p)])
        order = self.choice_arg("order_by", tuple(PROJECT_ORDER), "created_at")
        desc = self.choice_arg("sort", ("asc", "desc"), "desc") == "desc"
        key = PROJECT_ORDER[order or "created_at"]
        projects.sort(key=lambda p: (key(p), p.id), reverse=desc)
        simple = self.bool_arg("simple")
        page = self.paginate(projects)
        self.write_json([entities.project(self.store, p, viewer, simple=simple) for p in page])

    def _filter(self, viewer: User | None, projects: list[Project]) -> list[Project]:
        level = self.int_arg("min_access_level")
        if level is not None and level not in ACCESS_LEVELS:
            raise bad_param("min_access_level")
        visibility = self.choice_arg("visibility", VISIBILITIES, None)
        search = (self.get_query_argument("search", "") or "").lower()
        in_namespaces = self.bool_arg("search_namespaces")
        if viewer is not None and self.bool_arg("membership"):
            level = max(level or 0, GUEST)
        if viewer is not None and self.bool_arg("owned"):
            projects = [p for p in projects if p.owner_id == viewer.id]
        if level is not None and viewer is not None:
            projects = [p for p in projects if self.store.project_access(viewer, p) >= level]
        if visibility:
            projects = [p for p in projects if p.visibility == visibility]
        if search:
            projects = [p for p in projects if _matches(p, search, in_namespaces)]
        return projects


def _matches(p: Project, needle: str, in_namespaces: bool) -> bool:
    fields = [p.name, p.path, p.description] + ([p.full_path] if in_namespaces else [])
    return any(needle in f.lower() for f in fields)


class ProjectHandler(ApiHandler):
    def get(self, ref: str) -> None:
        viewer = self.authenticate()
        project = self.visible_project(ref, viewer)
        self.write_json(entities.project(self.store, project, viewer))


class ProjectMemberHandler(ApiHandler):
    """/projects/:id/members/all/:user_id (inherited) and /members/:user_id (direct)."""

    def get(self, ref: str, scope: str | None, user_id: str) -> None:
        viewer = self.authenticate()
        project = self.visible_project(ref, viewer)
        user = self.store.users.get(int(user_id))
        if user is None:
            raise not_found("Member")
        if scope:
            level = self.store.project_access(user, project)
        else:
            level = self.store.members.get(("project", project.id, user.id), 0)
            level = max(level, OWNER if project.owner_id == user.id else 0)
        if level == 0:
            raise not_found("Member")
        since = self.store.member_since.get(("project", project.id, user.id), user.created_at)
        self.write_json(entities.member(self.store, user, level, since))


class ShareBase(ApiHandler):
    def administered_project(self, ref: str) -> tuple[User, Project]:
        """Sharing needs GitLab's admin_project: Maintainer or Owner."""
        viewer = self.require_user()
        project = self.visible_project(ref, viewer)
        if self.store.project_access(viewer, project) < MAINTAINER:
            raise message(403, "403 Forbidden")
        return viewer, project


class ShareHandler(ShareBase):
    """POST /projects/:id/share: members of the group get at most group_access."""

    def post(self, ref: str) -> None:
        viewer, project = self.administered_project(ref)
        params = self.body_params()
        missing = [n for n in ("group_id", "group_access") if params.get(n) in (None, "")]
        if missing:
            raise ApiError(400, {"error": ", ".join(f"{m} is missing" for m in missing)})
        group_id, level = _int_param(params, "group_id"), _int_param(params, "group_access")
        if level not in SHARE_LEVELS:
            raise bad_param("group_access")
        expires = _date_param(params.get("expires_at"))
        group = self.store.groups.get(group_id)
        if group is None or not self.store.can_see_group(viewer, group):
            raise not_found("Group")
        home = self.store.groups.get(project.group_id) if project.group_id else None
        if any(g.id == group.id for g in self.store.ancestors(home)):
            raise message(409, "Project cannot be shared with the group it is in or one of "
                               "its ancestors.")
        with self.store.lock:
            if (project.id, group.id) in self.store.shares:
                raise message(409, "Project already shared with this group")
            share = Share(id=self.store.next_id("share"), project_id=project.id,
                          group_id=group.id, group_access=level, expires_at=expires)
            self.store.shares[(project.id, group.id)] = share
        self.write_json(entities.project_group_link(share), status=201)


class UnshareHandler(ShareBase):
    def delete(self, ref: str, group_id: str) -> None:
        _, project = self.administered_project(ref)
        with self.store.lock:
            if self.store.shares.pop((project.id, int(group_id)), None) is None:
                raise not_found("Group Link")
        self.set_status(204)
        self.finish()


def _int_param(params: dict[str, Any], name: str) -> int:
    try:
        return int(params[name])
    except (TypeError, ValueError):
        raise bad_param(name, "is invalid") from None


def _date_param(value: Any) -> date | None:
    if value in (None, ""):
        return None
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise bad_param("expires_at", "is invalid") from None


class GroupsHandler(ApiHandler):
    def get(self) -> None:
        viewer = self.authenticate()
        groups = [g for g in list(self.store.groups.values())
                  if self.store.can_see_group(viewer, g)]
        level = self.int_arg("min_access_level")
        if level is not None and level not in ACCESS_LEVELS:
            raise bad_param("min_access_level")
        all_available = viewer is None or self.bool_arg("all_available")
        if viewer is not None and (level is not None or not all_available):
            groups = [g for g in groups if self.store.group_access(viewer, g) >= (level or 1)]
        groups = self._filter(groups)
        order = self.choice_arg("order_by", tuple(GROUP_ORDER), "name")
        desc = self.choice_arg("sort", ("asc", "desc"), "asc") == "desc"
        key = GROUP_ORDER[order or "name"]
        groups.sort(key=lambda g: (key(g), g.id), reverse=desc)
        self.write_json([entities.group(self.store, g) for g in self.paginate(groups)])

    def _filter(self, groups: list[Group]) -> list[Group]:
        search = (self.get_query_argument("search", "") or "").lower()
        if search:
            groups = [g for g in groups if search in g.name.lower() or search in g.path.lower()]
        if self.bool_arg("top_level_only"):
            groups = [g for g in groups if g.parent_id is None]
        return groups


class GroupHandler(ApiHandler):
    def get(self, ref: str) -> None:
        viewer = self.authenticate()
        group = self.visible_group(ref, viewer)
        data = entities.group(self.store, group)
        projects = [p for p in list(self.store.projects.values())
                    if p.group_id == group.id and self.store.can_see_project(viewer, p)]
        data["projects"] = [entities.project(self.store, p, viewer) for p in projects]
        self.write_json(data)

    def visible_group(self, ref: str, viewer: User | None) -> Group:
        group = self.store.group_by_ref(ref)
        if group is None or not self.store.can_see_group(viewer, group):
            raise not_found("Group")
        return group


class GroupMemberHandler(GroupHandler):
    """/groups/:id/members/all/:user_id (inherited) and /members/:user_id (direct)."""

    def get(self, ref: str, scope: str | None, user_id: str) -> None:
        viewer = self.authenticate()
        group = self.visible_group(ref, viewer)
        user = self.store.users.get(int(user_id))
        if user is None:
            raise not_found("Member")
        key = ("group", group.id, user.id)
        level = self.store.group_access(user, group) if scope else self.store.members.get(key, 0)
        if level == 0:
            raise not_found("Member")
        since = self.store.member_since.get(key, user.created_at)
        self.write_json(entities.member(self.store, user, level, since))


_ID = r"([^/]+)"
HANDLERS = [
    (r"/api/v4/user", UserHandler),
    (r"/api/v4/version", VersionHandler),
    (r"/api/v4/projects", ProjectsHandler),
    (rf"/api/v4/projects/{_ID}", ProjectHandler),
    (rf"/api/v4/projects/{_ID}/members/(all/)?(\d+)", ProjectMemberHandler),
    (rf"/api/v4/projects/{_ID}/share", ShareHandler),
    (rf"/api/v4/projects/{_ID}/share/(\d+)", UnshareHandler),
    (r"/api/v4/groups", GroupsHandler),
    (rf"/api/v4/groups/{_ID}", GroupHandler),
    (rf"/api/v4/groups/{_ID}/members/(all/)?(\d+)", GroupMemberHandler),
]

# git over SSH: the internal API the double's gitlab-shell asks (see api_internal)
from .api_internal import HANDLERS as _INTERNAL_HANDLERS  # noqa: E402

HANDLERS = [*HANDLERS, *_INTERNAL_HANDLERS]
