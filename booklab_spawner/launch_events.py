"""What Booklab's pages wait on while a server launches: the spawner's public API.

The pages (``booklab_hub/handlers``) never read JupyterHub's private spawn
state and never poll it with sleeps: they await these methods, which wake on
events — the spawner's own "job written to Redis" event and the future
JupyterHub keeps for the spawn in progress. See "Spawner API used by the
pages" in docs/protocol.md.

JupyterHub 6.1 has no public way to await a spawn: ``BaseHandler.spawn_single_user``
stores it in ``Spawner._spawn_future`` (kept after a failure so that pages can
show the error, cleared after a success), and ``Spawner._failed`` is its own
reading of that future. Both are read here and only here, so that a change in
JupyterHub touches one module.
"""

from __future__ import annotations

import asyncio

from tornado import web


def launch_error_message(exc: BaseException) -> str:
    """A sentence for the person about a failed launch; details stay in the hub's log."""
    message = getattr(exc, "jupyterhub_message", None)
    if message:
        return message
    if isinstance(exc, web.HTTPError) and exc.status_code == 403:
        return "Your login has expired: log out and log in again"
    if isinstance(exc, web.HTTPError) and exc.log_message:
        return exc.log_message % exc.args if exc.args else exc.log_message
    if isinstance(exc, asyncio.TimeoutError):
        return ("The launch took longer than the hub's start timeout: ask your Booklab "
                "administrator to raise runners.start_timeout")
    return "The launch failed; ask your Booklab administrator to look at the hub's log"


class LaunchEvents:
    """Mixin of BooklabSpawner: wait for a launch's job, its end, and say why it failed.

    Expects ``job_id`` (set when the job is in Redis) and JupyterHub's ``Spawner``.
    """

    def _job_created(self) -> asyncio.Event:
        """Set once this launch's job is in Redis; cleared (not replaced) by clear_state,
        so that a page already waiting keeps waiting on the same event."""
        if getattr(self, "_job_event", None) is None:
            self._job_event = asyncio.Event()
            if self.job_id:
                self._job_event.set()
        return self._job_event

    def _hub_spawn(self) -> asyncio.Future | None:
        """JupyterHub's future of the spawn in progress or of the last failed one."""
        future = getattr(self, "_spawn_future", None)  # see the module's docstring
        return future if isinstance(future, asyncio.Future) else None

    def launch_requested(self, spawn: asyncio.Future) -> None:
        """Note a spawn a page has just asked of JupyterHub (the future of
        ``spawn_single_user``). JupyterHub marks a spawn pending only after its
        pre-spawn login refresh, a GitLab round trip: until then only this tells
        the other pages that a launch is under way."""
        self._requested_spawn = spawn

    def _in_progress(self) -> set[asyncio.Future]:
        futures = (getattr(self, "_requested_spawn", None), self._hub_spawn())
        return {f for f in futures if f is not None and not f.done()}

    async def wait_for_job(self, timeout: float) -> str | None:
        """The launch's job id, as soon as the job is in Redis.

        Returns None as soon as the launch ends without a job (``launch_error``
        says why), when no launch is in progress, or after ``timeout`` seconds.
        """
        if self.job_id:
            return self.job_id
        ends = self._in_progress()
        if not ends:
            return None
        created = asyncio.ensure_future(self._job_created().wait())
        try:
            await asyncio.wait({created, *ends}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            created.cancel()
        return self.job_id

    async def wait_launch_settled(self, timeout: float) -> bool:
        """Wait until JupyterHub has finished the spawn in progress (the server is
        ready — routed and answering — or the launch failed or was cancelled).
        True once nothing is in progress; False if ``timeout`` seconds passed first."""
        ends = self._in_progress()
        if ends:
            await asyncio.wait(ends, timeout=timeout)
        return not self._in_progress()

    @property
    def launch_error(self) -> str | None:
        """Why the last launch failed, in a sentence for the person; None if it did not."""
        exc = self._failed  # JupyterHub's own record, see the module's docstring
        return launch_error_message(exc) if exc else None

    async def interrupt_launch(self, timeout: float) -> None:
        """Cancel the spawn in progress, as JupyterHub's REST API does before a stop, and
        wait (at most ``timeout`` seconds) until it has unwound. The job in Redis, if
        any, is left to ``stop()``."""
        hub = self._hub_spawn()
        if hub is None or hub.done():
            return
        hub.cancel()
        await asyncio.wait({hub}, timeout=timeout)
