"""In-memory state of the GitLab double: users, namespaces, projects, members,
OAuth applications and tokens, deploy keys, browser sessions.

Permission rules live here too, so that every handler asks one place:
effective access is the highest of a user's direct project membership, their
membership in the project's group or any ancestor group, ownership of a
personal namespace (GitLab's inheritance), and, for every group the project is
shared with (``POST /projects/:id/share``), the lower of the user's role in that
group (or its ancestors) and the share's ``group_access``.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

GUEST, REPORTER, DEVELOPER, MAINTAINER, OWNER = 10, 20, 30, 40, 50
NO_ONE = 1000  # a protected branch nobody may push to (GitLab's "No one", 0)
ACCESS_LEVELS = (5, GUEST, REPORTER, DEVELOPER, MAINTAINER, OWNER)
VISIBILITIES = ("private", "internal", "public")
# what POST /projects/:id/share takes as group_access (GitLab's Access.values: no Owner)
SHARE_LEVELS = (GUEST, REPORTER, DEVELOPER, MAINTAINER)

# Scopes GitLab knows; an OAuth application may register any subset.
KNOWN_SCOPES = frozenset({
    "api", "read_api", "read_user", "read_repository", "write_repository",
    "read_registry", "write_registry", "sudo", "admin_mode", "openid", "profile",
    "email", "create_runner", "manage_runner", "k8s_proxy", "ai_features",
})
DEFAULT_OAUTH_SCOPES = ("api",)  # what GitLab grants when `scope` is omitted
TOKEN_LIFETIME = 7200
CODE_LIFETIME = 600


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class User:
    id: int
    username: str
    name: str
    email: str
    password: str
    namespace_id: int
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class Group:
    id: int
    name: str
    path: str
    full_path: str
    parent_id: int | None
    visibility: str
    description: str = ""
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class Project:
    id: int
    name: str
    path: str
    full_path: str
    group_id: int | None  # None: personal project, owned by owner_id
    owner_id: int | None
    default_branch: str
    visibility: str
    repo_dir: Path
    description: str = ""
    created_at: datetime = field(default_factory=utcnow)
    last_activity_at: datetime = field(default_factory=utcnow)


@dataclass
class OAuthApp:
    id: int
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    scopes: list[str]
    name: str


@dataclass
class Token:
    access_token: str
    refresh_token: str
    user_id: int
    app_id: int | None
    scopes: list[str]
    created_at: float
    expires_in: int | None
    revoked: bool = False

    def expired(self, now: float | None = None) -> bool:
        if self.expires_in is None:
            return False
        return (now or time.time()) >= self.created_at + self.expires_in


@dataclass
class AuthCode:
    code: str
    app_id: int
    user_id: int
    redirect_uri: str
    scopes: list[str]
    challenge: str | None
    challenge_method: str | None
    created_at: float = field(default_factory=time.time)
    used: bool = False


@dataclass
class DeployKey:
    id: int
    title: str
    key: str
    fingerprint: str
    fingerprint_sha256: str
    user_id: int
    created_at: datetime = field(default_factory=utcnow)
    expires_at: datetime | None = None


@dataclass
class Share:
    """A project shared with a group: its members get at most ``group_access``."""
    id: int
    project_id: int
    group_id: int
    group_access: int
    expires_at: date | None = None

    def active(self, today: date | None = None) -> bool:
        # GitLab's Expirable: a share is gone from the start of its expiry date
        return self.expires_at is None or self.expires_at > (today or utcnow().date())


@dataclass
class Session:
    user_id: int | None = None
    return_to: str | None = None


class NotFound(LookupError):
    """Raised by the Python API for a missing user, group or project."""


class Store:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.base_url = ""
        # GitLab behind a reverse proxy that rewrites Host: its pagination Link
        # header then names that host (python-gitlab's keep_base_url exists for it)
        self.link_host: str | None = None
        # seconds every REST, OAuth and git-over-HTTP answer waits: GitLab over a network
        self.latency = 0.0
        # while not 0: every REST call answers this status (GitLab down behind its proxy)
        self.outage = 0
        self.lock = threading.RLock()
        self._ids = {k: itertools.count(1)
                     for k in ("user", "ns", "project", "app", "key", "share")}
        self.users: dict[int, User] = {}
        self.groups: dict[int, Group] = {}
        self.projects: dict[int, Project] = {}
        # (kind, target id, user id) -> access level; kind is "group" or "project"
        self.members: dict[tuple[str, int, int], int] = {}
        self.member_since: dict[tuple[str, int, int], datetime] = {}
        self.apps: dict[str, OAuthApp] = {}
        self.tokens: dict[str, Token] = {}
        self.refresh_tokens: dict[str, Token] = {}
        self.codes: dict[str, AuthCode] = {}
        self.deploy_keys: dict[int, DeployKey] = {}
        # (project id, key id) -> can_push
        self.key_links: dict[tuple[int, int], bool] = {}
        self.sessions: dict[str, Session] = {}
        # (project id, group id) -> the share of that project with that group
        self.shares: dict[tuple[int, int], Share] = {}
        # (project id, branch) -> the role a push needs (GitLab's protected branches,
        # "Allowed to push and merge"); a project's default branch is protected for
        # Maintainers unless set here; NO_ONE: nobody may push
        self.protected: dict[tuple[int, str], int] = {}

    def next_id(self, kind: str) -> int:
        return next(self._ids[kind])

    # -- lookups ----------------------------------------------------------
    def user_by_name(self, username: str) -> User | None:
        low = username.lower()
        return next((u for u in list(self.users.values()) if u.username.lower() == low), None)

    def group_by_path(self, full_path: str) -> Group | None:
        low = full_path.lower()
        return next((g for g in list(self.groups.values()) if g.full_path.lower() == low), None)

    def project_by_path(self, full_path: str) -> Project | None:
        low = full_path.lower()
        return next((p for p in list(self.projects.values()) if p.full_path.lower() == low),
                    None)

    def project_by_ref(self, ref: str) -> Project | None:
        """A project by numeric id or full path (already URL-decoded)."""
        if ref.isdigit():
            return self.projects.get(int(ref))
        return self.project_by_path(ref)

    def group_by_ref(self, ref: str) -> Group | None:
        if ref.isdigit():
            return self.groups.get(int(ref))
        return self.group_by_path(ref)

    def require_user(self, username: str) -> User:
        user = self.user_by_name(username)
        if user is None:
            raise NotFound(f"no user {username!r}")
        return user

    def ancestors(self, group: Group | None) -> list[Group]:
        """The group itself and its parents, nearest first."""
        chain = []
        while group is not None:
            chain.append(group)
            group = self.groups.get(group.parent_id) if group.parent_id else None
        return chain

    def is_descendant(self, group: Group, of: Group) -> bool:
        return any(g.id == of.id for g in self.ancestors(group))

    # -- access -----------------------------------------------------------
    def group_access(self, user: User | None, group: Group) -> int:
        if user is None:
            return 0
        return max((self.members.get(("group", g.id, user.id), 0) for g in self.ancestors(group)),
                   default=0)

    def group_access_for_project(self, user: User | None, project: Project) -> int:
        if user is None or project.group_id is None:
            return 0
        return self.group_access(user, self.groups[project.group_id])

    def share_access(self, user: User | None, project: Project) -> int:
        """Access through the groups the project is shared with (and their parents'
        members): never more than the share's ``group_access``."""
        if user is None:
            return 0
        return max((min(self.group_access(user, self.groups[s.group_id]), s.group_access)
                    for s in list(self.shares.values())
                    if s.project_id == project.id and s.active()), default=0)

    def project_access(self, user: User | None, project: Project) -> int:
        """The effective role (GitLab's project_authorizations): what role rules use."""
        if user is None:
            return 0
        direct = self.members.get(("project", project.id, user.id), 0)
        owner = OWNER if project.owner_id == user.id else 0
        return max(direct, owner, self.group_access_for_project(user, project),
                   self.share_access(user, project))

    def push_level(self, project: Project, branch: str) -> int:
        """The role a push to ``branch`` needs: Developer, or the protection's level."""
        level = self.protected.get((project.id, branch))
        if level is None:
            level = MAINTAINER if branch == project.default_branch else DEVELOPER
        return level

    def is_protected(self, project: Project, branch: str) -> bool:
        return (project.id, branch) in self.protected or branch == project.default_branch

    def project_shares(self, project: Project) -> list[Share]:
        return sorted((s for s in list(self.shares.values()) if s.project_id == project.id),
                      key=lambda s: s.group_id)

    def can_see_project(self, user: User | None, project: Project) -> bool:
        if project.visibility == "public":
            return True
        if project.visibility == "internal":
            return user is not None
        return self.project_access(user, project) >= GUEST

    def can_read_code(self, user: User | None, project: Project) -> bool:
        if not self.can_see_project(user, project):
            return False
        if project.visibility == "private":
            return self.project_access(user, project) >= REPORTER
        return True

    def can_see_group(self, user: User | None, group: Group) -> bool:
        if group.visibility == "public":
            return True
        if user is None:
            return False
        if group.visibility == "internal" or self.group_access(user, group) >= GUEST:
            return True
        return self._member_below(user, group)

    def _member_below(self, user: User, group: Group) -> bool:
        """GitLab shows a private group to members of its subgroups and projects."""
        for (kind, target, uid) in list(self.members):
            if uid != user.id:
                continue
            inner = self.groups.get(target) if kind == "group" else None
            if kind == "project":
                project = self.projects.get(target)
                inner = self.groups.get(project.group_id) if project and project.group_id else None
            if inner is not None and self.is_descendant(inner, group):
                return True
        return False

    # -- tokens -----------------------------------------------------------
    def new_token(self, user_id: int, scopes: list[str], app_id: int | None = None,
                  expires_in: int | None = TOKEN_LIFETIME) -> Token:
        token = Token(access_token=secrets.token_hex(32), refresh_token=secrets.token_hex(32),
                      user_id=user_id, app_id=app_id, scopes=list(scopes),
                      created_at=time.time(), expires_in=expires_in)
        with self.lock:
            self.tokens[token.access_token] = token
            self.refresh_tokens[token.refresh_token] = token
        return token

    def revoke(self, token: Token) -> None:
        with self.lock:
            token.revoked = True
            self.refresh_tokens.pop(token.refresh_token, None)

    def app_by_id(self, app_id: int | None) -> OAuthApp | None:
        return next((a for a in list(self.apps.values()) if a.id == app_id), None)

    # -- deploy keys ------------------------------------------------------
    def project_keys(self, project: Project) -> list[tuple[DeployKey, bool]]:
        return [(self.deploy_keys[kid], push) for (pid, kid), push in list(self.key_links.items())
                if pid == project.id]

    def key_by_fingerprint(self, sha256: str) -> DeployKey | None:
        return next((k for k in list(self.deploy_keys.values())
                     if k.fingerprint_sha256 == sha256), None)

    def key_projects(self, key: DeployKey) -> list[Project]:
        return [self.projects[pid] for (pid, kid) in list(self.key_links) if kid == key.id]
