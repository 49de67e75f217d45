"""`GitLabDouble`: the Python API tests use to set up and inspect the double."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import entities, gitrepo
from .app import RequestLog, ServerThread, Timings, make_app
from .oauth import token_response
from .store import (
    ACCESS_LEVELS,
    KNOWN_SCOPES,
    MAINTAINER,
    SHARE_LEVELS,
    VISIBILITIES,
    Group,
    NotFound,
    OAuthApp,
    Project,
    Share,
    Store,
    User,
    utcnow,
)

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
Files = dict[str, "gitrepo.FileValue"]  # str/bytes, Symlink, Executable; None deletes


def _check_path(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    for part in parts:
        if not _SEGMENT.match(part) or part.endswith((".git", ".atom")):
            raise ValueError(f"invalid GitLab path {path!r}")
    return parts


class GitLabDouble:
    """A GitLab stand-in: OAuth2, REST v4 and git over HTTP on 127.0.0.1."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.data_dir)
        self.requests_log: RequestLog = []
        self.timings: Timings = []  # when each logged request arrived and was answered
        self._server: ServerThread | None = None

    # -- server -----------------------------------------------------------
    def start(self, port: int = 0, host: str = "127.0.0.1") -> None:
        """Serve on ``host`` (a free port unless given) from a background thread:
        127.0.0.1, or a local address that other network namespaces reach (a test's
        bridge, tests/netns.py), never a public interface."""
        self._server = ServerThread(
            lambda: make_app(self.store, self.requests_log, self.timings), port, host)
        self.store.base_url = f"http://{host}:{self._server.port}"
        self._server.start()

    @property
    def url(self) -> str:
        if not self.store.base_url:
            raise RuntimeError("GitLabDouble.start() was not called")
        return self.store.base_url

    @property
    def latency(self) -> float:
        """Seconds every REST, OAuth and git-over-HTTP answer waits (0: none), as a
        GitLab over a network would; an SSH connection waits it twice (sshd's key lookup and
        the shell's access check, GitLab Shell's two calls)."""
        return self.store.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self.store.latency = float(seconds)

    def hold(self) -> Callable[[], None]:
        """Hold every request, as a slow GitLab would, until the returned function is
        called (at most 300 s)."""
        if self._server is None:
            raise RuntimeError("GitLabDouble.start() was not called")
        return self._server.hold()

    def outage(self, status: int = 502) -> Callable[[], None]:
        """Answer every REST call with ``status`` (GitLab down behind its reverse proxy:
        502) until the returned function is called."""
        self.store.outage = status

        def end() -> None:
            self.store.outage = 0
        return end

    def stop(self) -> None:
        self.stop_ssh()
        if self._server is not None:
            self._server.stop()
            self._server = None

    # -- users, groups, projects -----------------------------------------
    def add_user(self, username: str, password: str | None = None, name: str | None = None,
                 email: str | None = None) -> dict[str, Any]:
        _check_path(username)
        with self.store.lock:
            if self.store.user_by_name(username) or self.store.group_by_path(username):
                raise ValueError(f"namespace {username!r} is already taken")
            user = User(id=self.store.next_id("user"), username=username,
                        name=name or username, email=email or f"{username}@example.com",
                        password=password or secrets.token_hex(8),
                        namespace_id=self.store.next_id("ns"))
            self.store.users[user.id] = user
        return entities.user(self.store, user, private=True)

    def add_group(self, path: str, visibility: str = "private", name: str | None = None,
                  description: str = "") -> dict[str, Any]:
        """Add a group; for "a/b" the parent "a" must exist."""
        parts = _check_path(path)
        if visibility not in VISIBILITIES:
            raise ValueError(f"visibility must be one of {VISIBILITIES}")
        with self.store.lock:
            parent = self.store.group_by_path("/".join(parts[:-1])) if len(parts) > 1 else None
            if len(parts) > 1 and parent is None:
                raise NotFound(f"parent group of {path!r} does not exist")
            if self.store.group_by_path(path) or (not parent and self.store.user_by_name(path)):
                raise ValueError(f"namespace {path!r} is already taken")
            group = Group(id=self.store.next_id("ns"), name=name or parts[-1], path=parts[-1],
                          full_path="/".join(parts), parent_id=parent.id if parent else None,
                          visibility=visibility, description=description)
            self.store.groups[group.id] = group
        return entities.group(self.store, group)

    def add_project(self, path: str, files: Files | None = None, default_branch: str = "main",
                    visibility: str = "private", description: str = "",
                    name: str | None = None) -> dict[str, Any]:
        """Add a project with a bare repository holding one initial commit.

        Missing groups on the way are created; a namespace that is a username
        makes a personal project owned by that user.
        """
        parts = _check_path(path)
        if len(parts) < 2 or visibility not in VISIBILITIES:
            raise ValueError(f"invalid project path or visibility: {path!r}, {visibility!r}")
        if self.store.project_by_path(path):
            raise ValueError(f"project {path!r} already exists")
        group, owner = self._namespace_for("/".join(parts[:-1]))
        repo_dir = self.data_dir / f"{'/'.join(parts)}.git"
        gitrepo.init_bare(repo_dir, default_branch)
        gitrepo.commit_files(repo_dir, default_branch, files or {"README.md": f"# {parts[-1]}\n"},
                             "Initial commit", base=None)
        with self.store.lock:
            project = Project(id=self.store.next_id("project"), name=name or parts[-1],
                              path=parts[-1], full_path="/".join(parts),
                              group_id=group.id if group else None,
                              owner_id=owner.id if owner else None,
                              default_branch=default_branch, visibility=visibility,
                              repo_dir=repo_dir, description=description)
            self.store.projects[project.id] = project
        return entities.project(self.store, project, owner)

    def _namespace_for(self, ns_path: str) -> tuple[Group | None, User | None]:
        group = self.store.group_by_path(ns_path)
        if group is not None:
            return group, None
        owner = self.store.user_by_name(ns_path) if "/" not in ns_path else None
        if owner is not None:
            return None, owner
        parts = ns_path.split("/")
        for depth in range(1, len(parts) + 1):
            if self.store.group_by_path("/".join(parts[:depth])) is None:
                self.add_group("/".join(parts[:depth]))
        return self.store.group_by_path(ns_path), None

    def _project(self, path: str) -> Project:
        project = self.store.project_by_path(path)
        if project is None:
            raise NotFound(f"no project {path!r}")
        return project

    def add_member(self, path: str, username: str, access_level: int) -> None:
        """Make a user a member of a project, or of a group (inherited below it)."""
        if access_level not in ACCESS_LEVELS:
            raise ValueError(f"access_level must be one of {ACCESS_LEVELS}")
        user = self.store.require_user(username)
        project = self.store.project_by_path(path)
        group = self.store.group_by_path(path) if project is None else None
        if project is None and group is None:
            raise NotFound(f"no project or group {path!r}")
        key = ("project", project.id, user.id) if project else ("group", group.id, user.id)
        with self.store.lock:
            self.store.members[key] = access_level
            self.store.member_since.setdefault(key, utcnow())

    def share_project(self, path: str, group_path: str, group_access: int,
                      expires_at: date | None = None) -> dict[str, Any]:
        """Share a project with a group, as ``POST /projects/:id/share`` does: the
        group's members (and its parent groups' members) get the lower of their role
        there and ``group_access`` on the project."""
        if group_access not in SHARE_LEVELS:
            raise ValueError(f"group_access must be one of {SHARE_LEVELS}")
        project = self._project(path)
        group = self.store.group_by_path(group_path)
        if group is None:
            raise NotFound(f"no group {group_path!r}")
        with self.store.lock:
            share = Share(id=self.store.next_id("share"), project_id=project.id,
                          group_id=group.id, group_access=group_access, expires_at=expires_at)
            self.store.shares[(project.id, group.id)] = share
        return entities.project_group_link(share)

    # -- repositories -----------------------------------------------------
    def commit(self, path: str, branch: str, files: Files, message: str = "Update files") -> str:
        """Commit on `branch` (created from the default branch if missing); returns the sha."""
        project = self._project(path)
        base = (gitrepo.rev_parse(project.repo_dir, f"refs/heads/{branch}")
                or gitrepo.rev_parse(project.repo_dir, f"refs/heads/{project.default_branch}"))
        sha = gitrepo.commit_files(project.repo_dir, branch, files, message, base)
        project.last_activity_at = utcnow()
        return sha

    def protect_branch(self, path: str, branch: str, push_access_level: int = MAINTAINER
                       ) -> None:
        """Protect ``branch``: a push needs ``push_access_level`` (Maintainer by default;
        ``NO_ONE``: nobody), as GitLab's ``POST /projects/:id/protected_branches``."""
        project = self._project(path)
        with self.store.lock:
            self.store.protected[(project.id, branch)] = push_access_level

    def head(self, path: str, branch: str) -> str | None:
        """The commit ``branch`` points to, None if there is no such branch."""
        return gitrepo.rev_parse(self._project(path).repo_dir, f"refs/heads/{branch}")

    def files_at(self, path: str, ref: str) -> dict[str, bytes]:
        """Every file of the project's tree at ``ref``, path -> content."""
        repo = self._project(path).repo_dir
        listing = gitrepo._git_bytes(repo, "ls-tree", "-r", "-z", ref)
        files = {}
        for entry in listing.decode().split("\0"):
            meta, _, name = entry.partition("\t")
            if name:
                files[name] = gitrepo._git_bytes(repo, "cat-file", "blob", meta.split()[2])
        return files

    def changed_paths(self, path: str, ref: str) -> list[tuple[str, str]]:
        """(status, path) of what commit ``ref`` changed against its parent (A, M, D)."""
        repo = self._project(path).repo_dir
        out = gitrepo._git_bytes(repo, "diff-tree", "--no-commit-id", "--no-renames", "-r",
                                 "-z", "--name-status", ref).decode()
        parts = [p for p in out.split("\0") if p]
        return sorted(zip(parts[0::2], parts[1::2], strict=True), key=lambda sp: sp[1])

    def create_tag(self, path: str, name: str, ref: str | None = None,
                   message: str | None = None) -> str:
        """Tag `ref` (default branch if None); annotated when a message is given."""
        project = self._project(path)
        target = gitrepo.rev_parse(project.repo_dir, ref or project.default_branch)
        if target is None:
            raise NotFound(f"no ref {ref!r} in {path!r}")
        sha = gitrepo.create_tag(project.repo_dir, name, target, message)
        project.last_activity_at = utcnow()
        return sha

    # -- OAuth ------------------------------------------------------------
    def add_oauth_app(self, client_id: str, client_secret: str,
                      redirect_uri: str | Iterable[str],
                      scopes: Iterable[str] = ("api", "read_user"),
                      name: str = "Booklab") -> dict[str, Any]:
        uris = [redirect_uri] if isinstance(redirect_uri, str) else list(redirect_uri)
        scopes = list(scopes)
        unknown = set(scopes) - KNOWN_SCOPES
        if unknown:
            raise ValueError(f"unknown scopes: {sorted(unknown)}")
        with self.store.lock:
            app = OAuthApp(id=self.store.next_id("app"), client_id=client_id,
                           client_secret=client_secret, redirect_uris=uris, scopes=scopes,
                           name=name)
            self.store.apps[client_id] = app
        return {"id": app.id, "application_id": client_id, "application_name": name,
                "secret": client_secret, "callback_url": "\n".join(uris),
                "scopes": scopes, "confidential": True}

    def issue_token(self, username: str, scopes: Iterable[str] = ("api",),
                    expires_in: int | None = 7200, client_id: str | None = None
                    ) -> dict[str, Any]:
        """A token as if issued by OAuth (refreshable through `client_id`'s app if given)."""
        user = self.store.require_user(username)
        app = self.store.apps.get(client_id) if client_id else None
        if client_id and app is None:
            raise NotFound(f"no OAuth application {client_id!r}")
        token = self.store.new_token(user.id, list(scopes), app.id if app else None, expires_in)
        return token_response(token)

    def expire_token(self, access_token: str) -> None:
        token = self.store.tokens[access_token]
        token.expires_in = token.expires_in or 0
        token.created_at = time.time() - token.expires_in - 1

    def revoke_token(self, access_token: str) -> None:
        self.store.revoke(self.store.tokens[access_token])

    # -- deploy keys and the SSH seam -----------------------------------
    def deploy_keys(self, path: str) -> list[dict[str, Any]]:
        project = self._project(path)
        keys = sorted(self.store.project_keys(project), key=lambda kp: kp[0].id)
        return [entities.deploy_key(k, push) for k, push in keys]

    def authorized_keys(self, command: str) -> str:
        """All deploy keys in authorized_keys format, each with a forced
        `command key-<id>` (as gitlab-shell does), for a future sshd's
        AuthorizedKeysCommand."""
        options = "no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty"
        return "".join(f'command="{command} key-{k.id}",{options} {k.key}\n'
                       for k in sorted(self.store.deploy_keys.values(), key=lambda k: k.id))

    def deploy_key_can_read(self, key_id: int, path: str) -> bool:
        """Whether deploy key `key_id` may fetch project `path` (the forced command's check)."""
        project = self.store.project_by_path(path)
        return project is not None and (project.id, key_id) in self.store.key_links

    # -- git over SSH (a real sshd; see ssh_server) --------------------------
    def start_ssh(self) -> str:
        """Start sshd on a free port of the double's own address (127.0.0.1 unless
        ``start(host=...)`` said otherwise); returns its known_hosts line.

        Afterwards ``ssh_url_to_repo`` is ``ssh://git@<that address>:PORT/<path>.git``.
        The data directory must be readable by the system user ``git``.
        """
        from .ssh_server import SshServer

        if getattr(self, "_ssh", None) is None:
            self._ssh = SshServer(self.store, self.url, urlsplit(self.url).hostname)
            self._ssh.start()
        return self._ssh.known_hosts_line

    def ssh_log(self) -> str:
        """What sshd logged (LogLevel VERBOSE: each connection's source address)."""
        ssh = getattr(self, "_ssh", None)
        return ssh.log() if ssh is not None else ""

    def stop_ssh(self) -> None:
        ssh = getattr(self, "_ssh", None)
        if ssh is not None:
            ssh.stop()
            self._ssh = None
