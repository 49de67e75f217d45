"""What every Booklab page shares: settings, Redis, the user's GitLab client, errors.

The handlers subclass JupyterHub's own ``BaseHandler``, so login, cookies,
XSRF, the ``page.html`` layout and ``self.current_user`` are the hub's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from jupyterhub.handlers import BaseHandler
from tornado import web

from booklab_spawner.exceptions import GitLabError, JobNotFound
from booklab_spawner.gitlab_api import GitLabClient
from booklab_spawner.jobs import JobStore
from booklab_spawner.keys import Keys
from booklab_spawner.redis_client import get_redis
from booklab_spawner.spawner import BooklabSpawner

PREFIX = "/booklab"  # under the hub's prefix: /hub/booklab/...
STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "static")
INTERRUPT_TIMEOUT = 10  # s a stop waits for an interrupted launch to unwind


@dataclass(frozen=True)
class PageSettings:
    """What the pages need from the hub's configuration of BooklabSpawner."""

    redis_url: str
    key_prefix: str
    gitlab_url: str
    profiles: tuple = ()  # the launch profiles (booklab_spawner.profiles.Profile), default first
    autosave: bool = False  # servers autosave at stop (config.yml save.autosave)

    @classmethod
    def from_app(cls, app) -> PageSettings:
        """Each value from its owner: Redis from the spawner's configuration, GitLab
        from the authenticator (as the spawner reads it too)."""
        spawner = BooklabSpawner(config=app.config, authenticator=app.authenticator)
        return cls(redis_url=spawner.redis_url, key_prefix=spawner.key_prefix,
                   gitlab_url=spawner.gitlab_url, profiles=tuple(spawner.launch_profiles),
                   autosave=spawner.autosave_hook is not None)


class BooklabHandler(BaseHandler):
    """Base of Booklab's pages: access to Redis, GitLab and readable errors."""

    def initialize(self, booklab: PageSettings) -> None:
        super().initialize()
        self.booklab = booklab

    @property
    def keys(self) -> Keys:
        return Keys(self.booklab.key_prefix)

    @property
    def redis(self):
        return get_redis(self.booklab.redis_url)

    @property
    def store(self) -> JobStore:
        return JobStore(self.redis, self.keys)

    def booklab_url(self, *parts: str) -> str:
        return self.hub.base_url + PREFIX.strip("/") + "/" + "/".join(parts)

    async def gitlab_for(self, user) -> GitLabClient:
        """A GitLab client acting with the user's own OAuth token."""
        auth_state = await user.get_auth_state() or {}
        token = auth_state.get("access_token")
        if not token:
            raise GitLabError("Booklab has no GitLab token for you: log out and log in again",
                              401)
        return GitLabClient(self.booklab.gitlab_url, token)

    def require_admin(self) -> None:
        if not self.current_user or not self.current_user.admin:
            raise web.HTTPError(403, "Only Booklab administrators can see this page")

    async def stop_server(self, user, spawner) -> None:
        """Stop a running server, or interrupt its launch, through JupyterHub."""
        if spawner.pending == "spawn":
            # as JupyterHub's API does: interrupt the start, then stop, so that
            # the spawner cancels the job in Redis wherever it got to
            await spawner.interrupt_launch(timeout=INTERRUPT_TIMEOUT)
        await self.stop_single_user(user, spawner.name)

    async def job_for_viewer(self, job_id: str) -> dict[str, str]:
        """The job record, if the current user owns it or is an admin; else 404."""
        try:
            job = await self.store.get(job_id)
        except (JobNotFound, ValueError):
            raise web.HTTPError(404, "No such build (its log may have expired)") from None
        user = self.current_user
        if job.get("user") != user.name and not user.admin:
            raise web.HTTPError(404, "No such build (its log may have expired)")
        return job

    async def render_page(self, name: str, **ns) -> None:
        html = await self.render_template(f"booklab/{name}", static=self.booklab_static,
                                          booklab_base=self.booklab_url(), **ns)
        self.finish(html)

    def booklab_static(self, path: str) -> str:
        version = web.StaticFileHandler.get_version({"static_path": STATIC_DIR}, path)
        return self.booklab_url("static", path) + (f"?v={version}" if version else "")


def gitlab_status(e: GitLabError) -> int:
    """HTTP status for our JSON answers when GitLab failed (never GitLab's 5xx body)."""
    if e.status in (401, 403, 404):
        return e.status
    return 502
