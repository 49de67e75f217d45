"""Notice notebook containers dying: one Docker event stream for all of them.

A runner with N slots has up to N notebooks, each alive for hours. Waiting on
each with ``container.wait()`` would hold a thread per notebook; instead one
daemon thread follows Docker's event stream, filtered to ``die`` events of
containers labelled for this runner, and hands each event to the event loop,
which resolves the future of whoever waits for that container.

No death is missed:

- a waiter registers its future first, then asks Docker for the container's
  status once, so a container that died before :meth:`ExitWatcher.wait` (or
  before the runner started) is noticed;
- every (re)subscription passes ``since``: the time of the last event seen,
  else the daemon's own clock at connect time, so Docker replays what
  happened while the stream was down (Docker keeps its recent events);
- after every (re)subscription the status of every pending container is
  checked again, for a gap longer than Docker's event buffer.

Several may wait for one container (the warm pool and then the job's worker,
the readiness check and the exit watch): they share one future, each awaits
it shielded, and it is forgotten when the last of them leaves, so a waiter
that is cancelled never ends another's wait.

Replayed or repeated events are harmless: resolving a resolved future, or one
nobody waits for, does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

RETRY_FIRST, RETRY_MAX = 0.5, 30.0  # seconds between reconnects, doubling
ALIVE = ("created", "running", "paused", "restarting")

# container id -> its Docker status ("gone" once removed)
Status = Callable[[str], Awaitable[str]]


class ExitWatcher:
    """``await watcher.wait(container_id)`` returns when that container died."""

    def __init__(self, client: Any, label: str, status: Status):
        self.client = client
        self.filters = {"type": "container", "event": ["die"], "label": [label]}
        self._status = status
        self._waiters: dict[str, asyncio.Future[int | None]] = {}
        self._count: dict[str, int] = {}  # container id -> its waiters (one future for all)
        self._checks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self._closed = threading.Event()
        self._since: int | None = None  # the daemon's time of the last event (seconds)
        self._first: asyncio.Future[None] | None = None
        self.connects = 0  # successful subscriptions so far (the runner's log says why)

    # -- the event loop's side ------------------------------------------------------
    async def start(self) -> None:
        """Start the thread; return after its first subscription attempt (when it
        fails, the thread keeps retrying and waiters still check once)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._first = self._loop.create_future()
        self._thread = threading.Thread(target=self._follow, name="booklab-exits",
                                        daemon=True)
        self._thread.start()
        await self._first

    async def wait(self, container_id: str) -> int | None:
        """Until the container has died or is gone; its exit code when Docker's
        event said it (None: it died unseen, e.g. before the runner started)."""
        if self._loop is None:
            await self.start()
        assert self._loop is not None
        fut = self._waiters.get(container_id)
        if fut is None:
            fut = self._waiters[container_id] = self._loop.create_future()
        self._count[container_id] = self._count.get(container_id, 0) + 1
        try:
            await self._recheck(container_id)  # it may have died before we listened
            # shielded: a waiter that is cancelled leaves the others waiting
            return await asyncio.shield(fut)
        finally:
            self._count[container_id] -= 1
            if not self._count[container_id]:
                del self._count[container_id]
                if self._waiters.get(container_id) is fut:
                    del self._waiters[container_id]

    async def close(self) -> None:
        """End the thread (closing the stream wakes it); waiters still pending are
        cancelled, as their tasks would be when the loop ends."""
        self._closed.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception as e:  # already broken: the thread sees _closed
                log.debug("closing Docker's event stream: %s", e)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        for fut in self._waiters.values():
            fut.cancel()
        for task in list(self._checks):
            task.cancel()

    async def _check(self, container_id: str) -> None:
        status = await self._status(container_id)
        if status not in ALIVE:
            self._died(container_id, None)

    def _died(self, container_id: str, code: int | None) -> None:
        fut = self._waiters.get(container_id)
        if fut is not None and not fut.done():
            fut.set_result(code)

    def _subscribed(self, ok: bool) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_result(None)
        if ok:  # what died while nobody listened (beyond Docker's replay) shows now
            for container_id in list(self._waiters):
                task = asyncio.ensure_future(self._recheck(container_id))
                self._checks.add(task)
                task.add_done_callback(self._checks.discard)

    async def _recheck(self, container_id: str) -> None:
        try:
            await self._check(container_id)
        except Exception as e:  # the next subscription checks again
            log.warning("checking container %s failed: %s", container_id[:12], e)

    # -- the thread's side ------------------------------------------------------------
    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the runner is exiting
            self._closed.set()

    def _follow(self) -> None:
        delay = RETRY_FIRST
        while not self._closed.is_set():
            try:
                since = self._since if self._since is not None else self._daemon_now()
                stream = self.client.events(decode=True, filters=self.filters, since=since)
            except Exception as e:
                log.warning("cannot follow Docker's events (retrying in %g s): %s", delay, e)
                self._post(self._subscribed, False)
            else:
                self._stream = stream
                if self._closed.is_set():
                    stream.close()
                    return
                self.connects += 1
                self._post(self._subscribed, True)
                delay = RETRY_FIRST
                self._read(stream)
                if self._closed.is_set():
                    return
                log.warning("Docker's event stream ended; reconnecting in %g s", delay)
            self._closed.wait(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _read(self, stream: Any) -> None:
        try:
            for event in stream:
                if not isinstance(event, dict):
                    continue
                when = event.get("time")
                if isinstance(when, int) and when > 0:
                    self._since = when
                actor = event.get("Actor") or {}
                container_id = event.get("id") or actor.get("ID")
                if isinstance(container_id, str) and container_id:
                    code = (actor.get("Attributes") or {}).get("exitCode")
                    self._post(self._died, container_id, _int(code))
        except Exception as e:  # a broken connection, a daemon restart: reconnect
            if not self._closed.is_set():
                log.warning("reading Docker's event stream failed: %s", e)

    def _daemon_now(self) -> int | None:
        """The daemon's clock (``SystemTime`` of ``docker info``), in seconds, less one:
        events from then on are replayed, whatever the skew between the clocks."""
        return daemon_seconds(str(self.client.info().get("SystemTime") or ""))


def daemon_seconds(system_time: str) -> int | None:
    """``2026-11-28T07:03:46.123456789Z`` -> Unix seconds, less one (None: unreadable)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)",
                     system_time)
    if m is None:
        return None
    zone = "+00:00" if m.group(2) == "Z" else m.group(2)
    return int(datetime.fromisoformat(m.group(1) + zone).timestamp()) - 1


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
