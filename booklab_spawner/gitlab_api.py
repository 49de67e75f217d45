"""Booklab's few GitLab operations, through python-gitlab, with one user's token.

python-gitlab is synchronous (requests): every operation runs in a worker thread
(``asyncio.to_thread``) with a ``gitlab.Gitlab`` of its own, closed afterwards,
so the hub's event loop never waits on GitLab and no client (nor its token) is
shared between users or threads. GitLab's own permission rules decide what a
user may read. The token travels only in the ``Authorization`` header
(python-gitlab's ``oauth_token``), never in a URL; python-gitlab logs nothing
itself, and requests drops the header when a redirect leaves the host.

``_mapped`` is the one place where GitLab's errors become Booklab's
``GitLabError`` with a message a person can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import gitlab

from . import validate as check
from .exceptions import GitLabError, InvalidInput

log = logging.getLogger(__name__)

TIMEOUT = 20  # seconds per request
PAGE = 100  # GitLab's largest page
MAX_REFS = 1000  # branches (and tags) listed for the picker; beyond: "truncated"
MAX_KEYS = 10_000  # deploy keys read from one project by the stale-key sweep
# reads retry transient errors (5xx, timeouts) a little; a create is never resent
_READ = {"max_retries": 2}
_WRITE = {"max_retries": 2, "retry_transient_errors": False}
_NUMERIC_ID = re.compile(r"[0-9]{1,12}")

EXPIRED = "Your GitLab login has expired or was revoked: log out and log in again"


class GitLabClient:
    """GitLab, as one user sees it. Cheap to make: one per token and task."""

    def __init__(self, base_url: str, token: str, timeout: float = TIMEOUT):
        # python-gitlab would take an empty URL for https://gitlab.com: never
        # send a user's token anywhere but the configured GitLab
        if not _is_http_url(base_url):
            raise GitLabError("The hub has no valid GitLab URL (gitlab.url): tell its operator")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<GitLabClient {self.base_url}>"

    def _gitlab(self) -> gitlab.Gitlab:
        # keep_base_url: a next-page link naming another host (GitLab behind a
        # proxy) is followed on gitlab.url; the token goes nowhere else
        return gitlab.Gitlab(self.base_url, oauth_token=self._token, timeout=self.timeout,
                             retry_transient_errors=True, keep_base_url=True)

    @contextlib.contextmanager
    def _session(self, not_found: str | None = None) -> Iterator[gitlab.Gitlab]:
        """A client for one operation; GitLab's errors leave it as ``GitLabError``."""
        try:
            with self._gitlab() as gl:
                yield gl
        except (gitlab.GitlabError, OSError) as e:  # requests' errors are OSErrors
            raise _mapped(e, self.base_url, not_found) from None

    # -- the launch's permission check (booklab_spawner.spawner) -----------------
    async def project(self, path: str) -> dict:
        return await asyncio.to_thread(self._project, path)

    def _project(self, path: str) -> dict:
        with self._session(f"Project {path!r} was not found, or your GitLab account "
                           "cannot read it") as gl:
            return gl.projects.get(path, **_READ).asdict()

    async def commit(self, project: int | str, ref: str) -> dict:
        """The commit ``ref`` names in ``project``: a numeric id, or a full path (so
        that a launch asks for project and commit at once)."""
        return await asyncio.to_thread(self._commit, project, ref)

    def _commit(self, project: int | str, ref: str) -> dict:
        pid = _pid_or_path(project)
        with self._session(f"Branch, tag or commit {ref!r} not found") as gl:
            return gl.projects.get(pid, lazy=True).commits.get(ref, **_READ).asdict()

    async def member_access(self, project_id: int | str, user_id: int | str) -> int:
        """The user's effective role on a project (``members/all``: own, inherited and
        through the groups it is shared with); 0 if none."""
        return await asyncio.to_thread(self._member_access, project_id, user_id)

    def _member_access(self, project_id: int | str, user_id: int | str) -> int:
        pid, uid = _pid(project_id), _pid(user_id, "user")
        try:
            with self._session() as gl:
                member = gl.projects.get(pid, lazy=True).members_all.get(uid, **_READ)
        except GitLabError as e:
            if e.status == 404:
                return 0
            raise
        return int(member.access_level or 0)

    # -- the repository picker (booklab_hub.handlers.picker) ----------------------
    async def member_projects(self, search: str = "", page: int = 1,
                              per_page: int = 20) -> tuple[list[dict], int | None]:
        """One page of the projects the user is a member of, most recently active
        first, filtered by GitLab's own search; returns (projects, next page or None)."""
        return await asyncio.to_thread(self._member_projects, search, page, per_page)

    def _member_projects(self, search: str, page: int,
                         per_page: int) -> tuple[list[dict], int | None]:
        query: dict[str, Any] = {"membership": "true", "simple": "true",
                                 "order_by": "last_activity_at", "sort": "desc",
                                 "page": max(int(page), 1), "per_page": per_page}
        if search:
            query.update(search=search, search_namespaces="true")
        with self._session("GitLab did not find your projects") as gl:
            # exactly the page asked for, and GitLab's word on whether there is a next
            found = gitlab.GitlabList(gl, f"{gl.api_url}/projects", query, get_next=False,
                                      **_READ)
            return list(found), found.next_page

    async def refs(self, project_id: int | str, kind: str) -> tuple[list[dict], bool]:
        """A project's ``branches`` or ``tags``, all pages up to ``MAX_REFS``;
        returns (refs, whether there were more)."""
        if kind not in ("branches", "tags"):
            raise ValueError(f"unknown ref kind {kind!r}")
        return await asyncio.to_thread(self._refs, project_id, kind)

    def _refs(self, project_id: int | str, kind: str) -> tuple[list[dict], bool]:
        pid = _pid(project_id)
        with self._session("Project not found, or your GitLab account cannot read it") as gl:
            manager = getattr(gl.projects.get(pid, lazy=True), kind)
            found = _first(manager.list(iterator=True, per_page=PAGE, **_READ), MAX_REFS + 1)
        return found[:MAX_REFS], len(found) > MAX_REFS

    # -- deploy keys (booklab_spawner.deploykeys; need Maintainer and `api`) --------
    async def add_deploy_key(self, project_id: int | str, title: str, key: str,
                             expires_at: str) -> dict:
        return await asyncio.to_thread(self._add_deploy_key, project_id, title, key,
                                       expires_at)

    def _add_deploy_key(self, project_id: int | str, title: str, key: str,
                        expires_at: str) -> dict:
        pid = _pid(project_id)
        data = {"title": title, "key": key, "can_push": False, "expires_at": expires_at}
        with self._session() as gl:
            return gl.projects.get(pid, lazy=True).keys.create(data, **_WRITE).asdict()

    async def delete_deploy_key(self, project_id: int | str, key_id: int | str) -> None:
        await asyncio.to_thread(self._delete_deploy_key, project_id, key_id)

    def _delete_deploy_key(self, project_id: int | str, key_id: int | str) -> None:
        pid, kid = _pid(project_id), _pid(key_id, "deploy key")
        with self._session() as gl:
            gl.projects.get(pid, lazy=True).keys.delete(kid, **_READ)

    async def deploy_keys(self, project_id: int | str) -> list[dict]:
        return await asyncio.to_thread(self._deploy_keys, project_id)

    def _deploy_keys(self, project_id: int | str) -> list[dict]:
        pid = _pid(project_id)
        with self._session() as gl:
            keys = gl.projects.get(pid, lazy=True).keys
            return _first(keys.list(iterator=True, per_page=PAGE, **_READ), MAX_KEYS)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url or "")
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. a broken IPv6 literal
        return False


def _pid(value: int | str, what: str = "project") -> int:
    """A numeric GitLab id, as GitLab gave it (a job record's copy is checked)."""
    text = str(value)
    if not _NUMERIC_ID.fullmatch(text):
        raise GitLabError(f"Not a GitLab {what} id", 0)
    return int(text)


def _pid_or_path(value: int | str) -> int | str:
    """A numeric id, or a project's full path as the launch validated it."""
    if _NUMERIC_ID.fullmatch(str(value)):
        return int(value)
    try:
        return check.project_path(value)
    except InvalidInput:
        raise GitLabError("Not a GitLab project id or path", 0) from None


def _first(listing, limit: int) -> list[dict]:
    """Up to ``limit`` objects of a python-gitlab listing, page after page."""
    return [obj.asdict() for obj in itertools.islice(listing, limit)]


def _mapped(e: Exception, base_url: str, not_found: str | None) -> GitLabError:
    """GitLab's error as Booklab shows it. ``not_found`` turns a 404 into that
    sentence and 401/403 into what to do; without it the status and GitLab's
    own message stay (callers decide, e.g. a deleted key's 404 is success)."""
    if not isinstance(e, gitlab.GitlabError):  # refused, timed out, TLS
        log.warning("GitLab at %s unreachable: %s", base_url, e)
        return GitLabError(f"GitLab at {base_url} is unreachable", 0)
    status = getattr(e, "response_code", None) or 0
    detail = _detail(e)
    log.info("GitLab at %s answered %s: %s", base_url, status or "badly", detail)
    if not_found is not None:
        if status == 404:
            return GitLabError(not_found, 404)
        if status == 401:
            return GitLabError(EXPIRED, 401)
        if status == 403:
            return GitLabError(f"GitLab refused access ({detail}); ask a maintainer of the "
                               "project for at least Reporter access", 403)
    return GitLabError(detail or f"GitLab answered {status}", status)


def _detail(e: Exception) -> str:
    """GitLab's own error text from the body: message, error_description or error."""
    try:
        data = json.loads(getattr(e, "response_body", None) or b"")
    except (ValueError, TypeError):
        data = None
    if isinstance(data, dict):
        msg = data.get("message") or data.get("error_description") or data.get("error")
        if msg:
            return msg if isinstance(msg, str) else json.dumps(msg)
    if getattr(e, "response_code", None):
        return ""
    return str(getattr(e, "error_message", "") or "")  # e.g. a body that is not JSON
