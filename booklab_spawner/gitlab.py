"""A small async client for the GitLab REST API v4, used inside the hub.

It never blocks the hub's event loop (Tornado's AsyncHTTPClient) and always
acts with the *user's* token, so GitLab's own permission rules decide what a
user may read. URLs are logged without their query strings; tokens travel only
in the ``Authorization`` header.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .exceptions import GitLabError

log = logging.getLogger(__name__)


class GitLabClient:
    def __init__(self, base_url: str, token: str, timeout: float = 20):
        self.base_url = base_url.rstrip("/")
        self.api_url = self.base_url + "/api/v4"
        self._token = token
        self.timeout = timeout

    async def request(self, method: str, path: str, params: dict | None = None,
                      body: dict | None = None) -> tuple[Any, dict[str, str]]:
        url = self.api_url + path + ("?" + urlencode(params) if params else "")
        req = HTTPRequest(
            url, method=method,
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json",
                     "Content-Type": "application/json"},
            body=json.dumps(body) if body is not None else None,
            request_timeout=self.timeout, connect_timeout=min(self.timeout, 10),
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as e:
            status = e.code
            detail = _error_detail(e.response.body if e.response else b"")
            log.info("GitLab %s %s -> %s %s", method, self.api_url + path, status, detail)
            raise GitLabError(detail or f"GitLab answered {status}", status) from None
        except OSError as e:
            log.warning("GitLab %s %s unreachable: %s", method, self.api_url + path, e)
            raise GitLabError(f"GitLab at {self.base_url} is unreachable", 0) from None
        data = json.loads(resp.body) if resp.body else None
        return data, dict(resp.headers)

    async def project(self, path: str) -> dict:
        try:
            data, _ = await self.request("GET", f"/projects/{quote(path, safe='')}")
        except GitLabError as e:
            raise _friendly(e, f"Project {path!r} was not found, or your GitLab account "
                               "cannot read it") from None
        return data

    async def commit(self, project_id: int | str, ref: str) -> dict:
        pid = quote(str(project_id), safe="")
        try:
            data, _ = await self.request(
                "GET", f"/projects/{pid}/repository/commits/{quote(ref, safe='')}")
        except GitLabError as e:
            raise _friendly(e, f"Branch, tag or commit {ref!r} not found") from None
        return data

    # -- for the repository picker (booklab_hub.handlers) ---------------------
    async def member_projects(self, search: str = "", page: int = 1,
                              per_page: int = 20) -> tuple[list[dict], int | None]:
        """One page of the projects the user is a member of, most recently active
        first, filtered by GitLab's own search; returns (projects, next page or None)."""
        params: dict[str, Any] = {"membership": "true", "simple": "true",
                                  "order_by": "last_activity_at", "sort": "desc",
                                  "page": max(int(page), 1), "per_page": per_page}
        if search:
            params.update(search=search, search_namespaces="true")
        try:
            data, headers = await self.request("GET", "/projects", params=params)
        except GitLabError as e:
            raise _friendly(e, "GitLab did not find your projects") from None
        next_page = headers.get("X-Next-Page") or headers.get("x-next-page") or ""
        return data or [], int(next_page) if next_page.isdigit() else None

    async def refs(self, project_id: int | str, kind: str, per_page: int = 100) -> list[dict]:
        """The first page of a project's ``branches`` or ``tags``."""
        if kind not in ("branches", "tags"):
            raise ValueError(f"unknown ref kind {kind!r}")
        pid = quote(str(project_id), safe="")
        try:
            data, _ = await self.request("GET", f"/projects/{pid}/repository/{kind}",
                                         params={"per_page": per_page})
        except GitLabError as e:
            raise _friendly(e, "Project not found, or your GitLab account cannot read it"
                            ) from None
        return data or []


def _friendly(e: GitLabError, not_found: str) -> GitLabError:
    if e.status == 404:
        return GitLabError(not_found, 404)
    if e.status == 401:
        return GitLabError("Your GitLab login has expired or was revoked: "
                           "log out and log in again", 401)
    if e.status == 403:
        return GitLabError(f"GitLab refused access ({e}); ask a maintainer of the project "
                           "for at least Reporter access", 403)
    return e


def _error_detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return ""
    if isinstance(data, dict):
        msg = data.get("message") or data.get("error_description") or data.get("error")
        return msg if isinstance(msg, str) else json.dumps(msg)
    return ""
