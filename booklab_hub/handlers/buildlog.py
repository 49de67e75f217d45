"""The build-log page and its Server-Sent Events stream.

The stream replays a job's log from the start (or after ``Last-Event-ID``)
and follows it live; every entry's SSE ``id`` is its Redis stream id, so a
browser that lost the connection resumes where it stopped. Events:

``log``, ``state``  one log line / state change (JSON ``LogEntry``)
``job``             the job id, once the server's launch has one
``ready``           the server is up: ``{"url": "/user/<name>/<server>/"}``
``failed``          the launch failed: ``{"message": "<reason>"}``
``stopped``         the job was stopped
``end``             nothing more will come; the page closes the stream

Comments (``: keepalive``) are sent while nothing happens so that proxies
keep the connection open. The log stays readable after the build is over.
"""

from __future__ import annotations

import asyncio
import json
import re

from jupyterhub.utils import url_escape_path
from tornado import web
from tornado.iostream import StreamClosedError

from booklab_spawner.exceptions import InvalidInput
from booklab_spawner.jobs import FAILED, RUNNING, STOPPED, TERMINAL

from .base import BooklabHandler
from .launch import target_path

_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
RESOLVE_TIMEOUT = 120  # s a server-keyed stream waits for the launch to create its job
# open streams per person: each one waits on Redis holding a connection of the hub's
# pool (100), so one person's script or tabs must not take them all
MAX_STREAMS_PER_USER = 10


def _safe_next(value: str) -> str:
    try:
        return target_path(urlpath=value)
    except InvalidInput:
        return ""


class BuildViewer(BooklabHandler):
    """Who may watch what: a person their own servers and jobs, admins everything."""

    def server_spawner(self, user_name: str, name: str):
        viewer = self.current_user
        if viewer is None:
            raise web.HTTPError(403, "Log in first")
        user = self.find_user(user_name)
        if user is None or (user.name != viewer.name and not viewer.admin):
            raise web.HTTPError(404, "No such server")
        spawner = user.spawners.get(name)
        if spawner is None or not name:
            raise web.HTTPError(404, "No such server")
        return user, spawner


class BuildPageHandler(BuildViewer):
    """/hub/booklab/build/<user>/<server>: the launch that is going on right now."""

    @web.authenticated
    async def get(self, user_name: str, name: str) -> None:
        user, spawner = self.server_spawner(user_name, name)
        opts = spawner.user_options or {}
        await self.render_page(
            "build.html", title=f"{opts.get('project', name)} @ {opts.get('ref', '')}",
            job=None, owner=user.name, server=name,
            auto_open=user.name == self.current_user.name, next_path=_safe_next(
                self.get_argument("next", "")),
            events_url=self.booklab_url("api/build", url_escape_path(user.name), name,
                                        "events"))


class JobPageHandler(BuildViewer):
    """/hub/booklab/jobs/<job>: one job's log, also long after it finished."""

    @web.authenticated
    async def get(self, job_id: str) -> None:
        job = await self.job_for_viewer(job_id)
        await self.render_page(
            "build.html", title=f"{job.get('project', '')} @ {job.get('ref', '')}",
            job=job, owner=job.get("user", ""), server=job.get("server_name", ""),
            auto_open=self.get_argument("follow", "") == "1"
            and job.get("user") == self.current_user.name,
            next_path=_safe_next(self.get_argument("next", "")),
            events_url=self.booklab_url("api/jobs", job_id, "events"))


class EventStream(BuildViewer):
    """Common SSE machinery: headers, events, keepalives, replay and follow."""

    # below redis-py's default socket timeout (5 s): a longer XREAD BLOCK times out
    # on the client, is retried, and ends the stream with an error after ~36 s
    keepalive_ms = 4_000

    def start_stream(self) -> str:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        last = self.request.headers.get("Last-Event-ID", "") or self.get_argument("after", "")
        return last if _STREAM_ID.fullmatch(last) else "0-0"

    async def send(self, event: str, data: dict, event_id: str = "") -> None:
        lines = (f"id: {event_id}\n" if event_id else "") + f"event: {event}\n"
        self.write(lines + f"data: {json.dumps(data)}\n\n")
        await self.flush()

    async def keepalive(self) -> None:
        self.write(": keepalive\n\n")
        await self.flush()

    async def stream_job(self, job_id: str, after: str) -> None:
        state = await self.store.state(job_id)
        if state in TERMINAL and not await self.store.read_log(job_id, after, count=1):
            return await self._finish(job_id)
        async for entry in self.store.follow_log(job_id, after=after,
                                                 block_ms=self.keepalive_ms):
            if entry is None:
                await self.keepalive()
                continue
            await self.send(entry.kind, entry.as_dict(), entry.id)
            if entry.kind == "state" and entry.state == RUNNING:
                url = await self._ready_url(job_id)
                if url:
                    await self.send("ready", {"url": url})
                    return await self.send("end", {})
        await self._finish(job_id)

    async def _finish(self, job_id: str) -> None:
        job = await self.store.get(job_id)
        if job.get("state") == FAILED:
            await self.send("failed", {"message": job.get("error") or "The launch failed"})
        elif job.get("state") == STOPPED:
            await self.send("stopped", {"message": "This server was stopped"})
        await self.send("end", {})

    async def _ready_url(self, job_id: str) -> str | None:
        """The server's URL once JupyterHub has it ready, if this job is still its job."""
        job = await self.store.get(job_id)
        user = self.find_user(job.get("user", ""))
        spawner = user.spawners.get(job.get("server_name", "")) if user else None
        if job.get("state") != RUNNING or spawner is None or spawner.job_id != job_id:
            return None
        # JupyterHub still has to route the server and see it answer: keep the stream
        # alive meanwhile
        while not await spawner.wait_launch_settled(self.keepalive_ms / 1000):
            await self.keepalive()
        return user.server_url(spawner.name) if spawner.ready else None

    _open: dict[str, int] = {}  # person -> streams open in this hub process

    async def run(self, coro) -> None:
        name = self.current_user.name
        if self._open.get(name, 0) >= MAX_STREAMS_PER_USER:
            coro.close()
            raise web.HTTPError(429, "Too many build logs are open at once: close some tabs")
        self._open[name] = self._open.get(name, 0) + 1
        self._task = asyncio.ensure_future(coro)
        try:
            await self._task
        except StreamClosedError:
            pass  # the browser went away; it resumes with Last-Event-ID
        except asyncio.CancelledError:
            if not getattr(self, "_gone", False):
                raise
        finally:
            self._open[name] -= 1

    def on_connection_close(self) -> None:
        """The browser went away: stop waiting on Redis now, not at the next keepalive."""
        self._gone = True
        task = getattr(self, "_task", None)
        if task is not None:
            task.cancel()
        super().on_connection_close()


class JobEventsHandler(EventStream):
    """/hub/booklab/api/jobs/<job>/events"""

    async def get(self, job_id: str) -> None:
        if self.current_user is None:
            raise web.HTTPError(403, "Log in first")
        await self.job_for_viewer(job_id)
        after = self.start_stream()
        await self.run(self.stream_job(job_id, after))


class BuildEventsHandler(EventStream):
    """/hub/booklab/api/build/<user>/<server>/events: follows the server's current launch."""

    async def get(self, user_name: str, name: str) -> None:
        user, spawner = self.server_spawner(user_name, name)
        after = self.start_stream()
        await self.run(self._follow(spawner, after))

    async def _follow(self, spawner, after: str) -> None:
        # while the launch checks with GitLab there is no job yet: open the stream now
        # (the browser sees it connected), then wait for the job's event
        await self.keepalive()
        job_id = await spawner.wait_for_job(RESOLVE_TIMEOUT)
        if job_id is None:
            message = spawner.launch_error or (
                "This server is not starting; launch it again from the Booklab page")
            await self.send("failed", {"message": message})
            return await self.send("end", {})
        await self.send("job", {"job": job_id,
                                "page": self.booklab_url("jobs", job_id)})
        await self.stream_job(job_id, after)
