"""A launch under way when the hub restarted: the restarted hub follows it.

At start-up JupyterHub checks every server its database says was started: it
awaits ``poll()`` (in the background once ``init_spawners_timeout`` has passed),
asks ``get_url()`` of a server that runs, checks it answers, and adds the route
when the checks are done. BooklabSpawner's ``poll()`` hands such a launch (its
job still queued or on its way, started by an earlier hub process) to
``_resume``, which follows it as ``start()`` does, with the same phase timeouts.
See "Hub restart" in docs/protocol.md.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .credentials import SpawnFailed
from .jobs import RUNNING


class FollowAfterRestart:
    """Mixin of BooklabSpawner (which provides the job store, ``_wait_until_running``,
    ``_notebook_url`` and ``_release_deploy_key``)."""

    async def _resume(self, job_id: str) -> int | None:
        """Follow a launch the hub was waiting for when it stopped, as start() does (the
        same phase timeouts): None once it runs (get_url() then gives JupyterHub its
        URL), 1 when it ended otherwise (the job failed with its reason)."""
        self._launched_here = job_id  # this process follows it now
        self.log.info("Job %s of %s was under way when the hub restarted: following it",
                      job_id, self._log_name)
        try:
            await self._wait_until_running(job_id)
        except SpawnFailed as e:
            self.log.warning("Job %s of %s, followed after a hub restart: %s", job_id,
                             self._log_name, e)
            await self._release_deploy_key()
            return 1
        return None

    async def get_url(self) -> str:
        """Where the server is (JupyterHub asks after a restart, when poll() says it
        runs): the URL the runner reported for the job, checked, rather than the one
        in the hub's database, which a launch that ended after the restart never set."""
        job = await self.store.find(self.job_id) if self.job_id else {}
        if job.get("state") != RUNNING or self.server is None:
            return await super().get_url()
        where = urlsplit(await self._notebook_url(self.job_id))
        # the runner reports scheme, host and port; the path is the hub's (base_url)
        return f"{where.scheme}://{where.netloc}{self.server.base_url}"
