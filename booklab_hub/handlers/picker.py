"""The repository picker (the landing page), its JSON endpoints, stop, and the badge.

Project lists and refs are read from GitLab with the person's own token
(``booklab_spawner.gitlab_api``): projects one page at a time, as the browser
asks for them while the person types (debounced); a project's branches and
tags all at once, up to ``MAX_REFS`` of each.
"""

from __future__ import annotations

import asyncio
import json

from jupyterhub.utils import url_escape_path, url_path_join
from tornado import web

from booklab_spawner import validate as check
from booklab_spawner.exceptions import GitLabError, InvalidInput
from booklab_spawner.gitlab_api import MAX_REFS
from booklab_spawner.registry import alive_runners

from .base import STATIC_DIR, BooklabHandler, gitlab_status

PER_PAGE = 20
MAX_SEARCH = 100


def _project_json(p: dict) -> dict:
    return {key: p.get(key) for key in (
        "id", "name", "path_with_namespace", "description", "default_branch",
        "last_activity_at", "web_url")}


class JSONHandler(BooklabHandler):
    """JSON for the picker's script; errors as {"error": "..."} a person can read."""

    async def prepare(self):
        await super().prepare()
        if not self.current_user:
            raise web.HTTPError(403, "Log in first")

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message \
            else "Something went wrong; try again"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def gitlab_failed(self, e: GitLabError) -> None:
        self.set_status(gitlab_status(e))
        self.finish({"error": str(e)})


class ProjectsAPIHandler(JSONHandler):
    """GET ?search=&page=: one page of the person's projects, recently active first."""

    async def get(self) -> None:
        search = self.get_argument("search", "").strip()[:MAX_SEARCH]
        try:
            page = max(int(self.get_argument("page", "1")), 1)
        except ValueError:
            raise web.HTTPError(400, "page must be a number") from None
        try:
            gitlab = await self.gitlab_for(self.current_user)
            projects, next_page = await gitlab.member_projects(search, page, PER_PAGE)
        except GitLabError as e:
            return self.gitlab_failed(e)
        self.finish({"projects": [_project_json(p) for p in projects],
                     "page": page, "next_page": next_page})


class RefsAPIHandler(JSONHandler):
    """GET ?project=group/name: branches, tags and the default branch."""

    async def get(self) -> None:
        try:
            path = check.project_path(self.get_argument("project", ""))
        except InvalidInput as e:
            raise web.HTTPError(400, str(e)) from None
        try:
            gitlab = await self.gitlab_for(self.current_user)
            project = await gitlab.project(path)
            (branches, more_branches), (tags, more_tags) = await asyncio.gather(
                gitlab.refs(project["id"], "branches"), gitlab.refs(project["id"], "tags"))
        except GitLabError as e:
            return self.gitlab_failed(e)
        default = project.get("default_branch") or ""
        names = [b["name"] for b in branches]
        if default and default not in names:  # beyond the listed ones: list it anyway
            names.insert(0, default)
        self.finish({
            "project": path, "default_branch": default, "branches": names,
            "tags": [t["name"] for t in tags], "truncated": more_branches or more_tags,
        })


def running_servers(user) -> list[dict]:
    """The person's named servers that are running or on their way."""
    servers = []
    for name, spawner in sorted(user.spawners.items()):
        if not name or not (spawner.ready or spawner.pending):
            continue
        opts = spawner.user_options or {}
        servers.append({
            "name": name, "project": opts.get("project", ""), "ref": opts.get("ref", ""),
            "ready": spawner.ready, "pending": spawner.pending or "",
            "url": url_path_join(user.url, url_escape_path(name), "/"),
        })
    return servers


class PickerHandler(BooklabHandler):
    """The landing page: choose a project and a ref, launch, see running servers."""

    @web.authenticated
    async def get(self) -> None:
        user = self.current_user
        alive = await alive_runners(self.redis, self.keys)
        await self.render_page(
            "picker.html", servers=running_servers(user), runners_alive=len(alive),
            public_base=f"{self.request.protocol}://{self.request.host}",
            message=self.get_argument("message", "")[:200], max_refs=MAX_REFS,
            profiles=self.booklab.profiles, autosave=self.booklab.autosave,
        )


class StopHandler(BooklabHandler):
    """POST name=<server>: stop one of the person's servers (XSRF-checked by the hub)."""

    @web.authenticated
    async def post(self) -> None:
        user = self.current_user
        name = self.get_body_argument("name", "")
        spawner = user.spawners.get(name) if name else None
        if spawner is None or not (spawner.ready or spawner.pending == "spawn"):
            raise web.HTTPError(404, "You have no running server with that name")
        await self.stop_server(user, spawner)
        self.redirect(self.booklab_url())


class BadgeHandler(web.StaticFileHandler):
    """The launch badge, served by the hub so READMEs need nothing from the internet."""

    def initialize(self) -> None:
        super().initialize(path=STATIC_DIR)

    async def get(self) -> None:
        await super().get("badge.svg")

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "public, max-age=86400")
