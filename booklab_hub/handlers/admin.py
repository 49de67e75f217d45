"""Admin pages: runners (from their heartbeat and record), the queue and the jobs.

Admins only (403 for everyone else). Cancelling a job that belongs to a
server goes through JupyterHub (stop the server), so the hub's state stays
consistent; a queued job without a server is taken off the queue directly.
"""

from __future__ import annotations

import json
import time

from tornado import web

from booklab_spawner.jobs import ACTIVE, QUEUED

from .base import BooklabHandler

MAX_JOBS = 200  # newest jobs shown (job ids start with their creation time)
_RUNNER_FIELDS = ("host", "slots", "used", "version", "images", "started")


def _age(ts: str | None, now: float) -> str:
    try:
        seconds = max(now - float(ts or ""), 0)
    except ValueError:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _list_field(value: str | None) -> list[str]:
    try:
        data = json.loads(value or "[]")
    except ValueError:
        return [value] if value else []
    return [str(v) for v in data] if isinstance(data, list) else [str(data)]


def _labels_field(value: str | None) -> list[tuple[str, str]]:
    """A runner's ``labels`` (JSON object, from Redis: untrusted) as shown: sorted
    ``(key, value)`` strings, memory in GiB, at most 32."""
    try:
        data = json.loads(value or "{}")
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    shown = []
    for key, val in sorted(data.items())[:32]:
        text = str(val)[:128]
        if key == "memory" and text.isdigit():
            text = f"{int(text) / 1024 ** 3:.1f} GiB"
        shown.append((str(key)[:64], text))
    return shown


def _warm_field(value: str | None) -> list[tuple[str, int]]:
    """``[(image, warm containers)]`` from a runner's ``warm`` field (runner/warm.py)."""
    try:
        data = json.loads(value or "{}")
        return sorted((str(k), int(v)) for k, v in data.items())
    except (ValueError, AttributeError, TypeError):
        return []


async def runner_rows(redis, keys) -> list[dict]:
    ids = sorted(await redis.smembers(keys.runners))
    now = time.time()
    rows = []
    for runner_id in ids:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.heartbeat(runner_id))
            pipe.hgetall(keys.runner(runner_id))
            beat, info = await pipe.execute()
        row = {"id": runner_id, "alive": beat is not None,
               "last_beat": _age(beat, now) if beat else "",
               **{f: info.get(f, "") for f in _RUNNER_FIELDS}}
        row["images"] = _list_field(info.get("images"))
        row["jobs"] = _list_field(info.get("jobs"))
        row["labels"] = _labels_field(info.get("labels"))
        row["warm"] = _warm_field(info.get("warm"))
        rows.append(row)
    return rows


async def job_rows(store, runner_ids: list[str], profiles: tuple[str, ...] = ("default",)
                   ) -> list[dict]:
    """The jobs that are queued (in any profile's queue) or on a runner, however old,
    and the newest others; a queued job's position is in its profile's queue."""
    await store.prune()
    queues = {name: await store.queued(name) for name in profiles}
    positions = {job_id: i for q in queues.values() for i, job_id in enumerate(q, start=1)}
    queue = list(positions)
    held = [job_id for runner_id in runner_ids for job_id in await store.claimed_by(runner_id)]
    ids = sorted({*queue, *held, *await store.recent(MAX_JOBS)}, reverse=True)
    now = time.time()
    rows = []
    for job_id, job in zip(ids, await store.find_many(ids), strict=True):
        if not job:
            continue  # expired record; its index entry goes with the next prune
        position = positions.get(job_id)
        rows.append({**job, "age": _age(job.get("created"), now), "position": position,
                     "cancellable": job.get("state") in (QUEUED, *ACTIVE)})
    return rows


class AdminHandler(BooklabHandler):
    """/hub/booklab/admin: runners, queue, jobs."""

    @web.authenticated
    async def get(self) -> None:
        self.require_admin()
        runners = await runner_rows(self.redis, self.keys)
        jobs = await job_rows(self.store, [r["id"] for r in runners],
                              tuple(p.name for p in self.booklab.profiles) or ("default",))
        await self.render_page(
            "admin.html", runners=runners, jobs=jobs,
            queued=sum(1 for j in jobs if j.get("state") == QUEUED),
            message=self.get_argument("message", "")[:200])


class CancelJobHandler(BooklabHandler):
    """POST /hub/booklab/admin/jobs/<job>/cancel (XSRF-checked by the hub)."""

    @web.authenticated
    async def post(self, job_id: str) -> None:
        self.require_admin()
        job = await self.job_for_viewer(job_id)
        message = await self._cancel(job)
        self.log.info("Admin %s cancelled job %s: %s", self.current_user.name, job_id, message)
        self.redirect(self.booklab_url("admin") + "?message=" + web.escape.url_escape(message))

    async def _cancel(self, job: dict[str, str]) -> str:
        user = self.find_user(job.get("user", ""))
        spawner = user.spawners.get(job.get("server_name", "")) if user else None
        if spawner is not None and spawner.job_id == job["id"] and (
                spawner.ready or spawner.pending == "spawn"):
            await self.stop_server(user, spawner)
            return f"Stopping {user.name}'s server {spawner.name}"
        return await self._cancel_orphan(job)

    async def _cancel_orphan(self, job: dict[str, str]) -> str:
        """A job no server owns any more: off the queue, or told to stop on its runner."""
        outcome, job = await self.store.request_stop(job["id"], "Cancelled by an administrator")
        if outcome == "asked":
            return f"Asked runner {job['runner']} to stop job {job['id']}"
        if outcome == "stopping":
            return f"Job {job['id']} is already stopping"
        if outcome == "cancelled":
            return f"Cancelled queued job {job['id']}"
        if outcome == "ended":
            return f"Job {job['id']} had already ended"
        await self.store.fail(job["id"], "Cancelled by an administrator: the job names no runner")
        return f"Failed job {job['id']}, which names no runner"
