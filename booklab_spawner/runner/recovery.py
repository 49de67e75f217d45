"""Nothing stuck: reaping the jobs of dead runners, and reconciling at start.

**Reaping.** Every live runner scans ``runners`` every ``reap_interval``
seconds (``--reap-interval``, default 5). For a runner without a heartbeat (it
expires 30 s after the last beat), each job in its ``claimed:<runner>`` list
that had not started running goes back to the queue, in one atomic step
(:meth:`JobStore.reap`), so with a 5 s scan a dead runner's waiting jobs are
requeued within ~35 s. Its running notebooks are left alone for
``orphan_grace`` seconds (``--orphan-grace``, default 300), so that the runner
can come back and adopt them (the hub's ``poll()`` fails them meanwhile if it
notices first); after that they are failed and the runner is forgotten. Both
are the reaping runner's own settings (:class:`~.app.RunnerApp`).

**Reconciling.** A runner that starts looks for containers labelled with its
id: a container whose job is still ``running`` on this runner is adopted
(watched again, stoppable again); every other one is removed, the unbound
warm containers (:mod:`.warm`) included: a warm container's job is its name,
``booklab-<job>``, given when it was bound (:func:`.containers.bound_job`).
Jobs left in its ``claimed`` list are requeued (not started yet), confirmed
stopped (a stop was asked) or failed (their container is gone).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .. import jobs as J
from .containers import Launcher, exit_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryContext:
    """What reaping and reconciling need of their runner, and nothing more."""

    runner_id: str
    store: J.JobStore
    dead_runners: Callable[[], Awaitable[dict[str, float]]]  # id -> last beat
    forget: Callable[[str], Awaitable[None]]  # remove a dead runner's traces
    launcher: Launcher | None = None  # reconcile only
    adopt: Callable[[str, str, str], None] | None = None  # (job, container, image)
    reap_interval: float = 5.0
    orphan_grace: float = 300.0
    stopping: asyncio.Event | None = None

async def reap_dead(runner: RecoveryContext) -> list[tuple[str, str, str]]:
    """One scan; returns (dead runner, job, outcome) for each job looked at."""
    store, grace = runner.store, runner.orphan_grace
    outcomes = []
    for dead, last_beat in (await runner.dead_runners()).items():
        if dead == runner.runner_id:
            continue
        gone_long = time.time() - last_beat > grace
        for job_id in await store.claimed_by(dead):
            outcome = await store.reap(dead, job_id, f"Runner {dead} stopped answering (no "
                                       "heartbeat); the job went back to the queue")
            if outcome in (J.RUNNING, J.STOPPING) and gone_long:
                outcome = await store.reap(dead, job_id, f"Runner {dead} has been gone for "
                                           f"over {grace:.0f} s; the notebook is lost",
                                           mode="fail")
            if outcome != "alive":
                log.info("reaped job %s of dead runner %s: %s", job_id, dead, outcome)
            outcomes.append((dead, job_id, outcome))
        if gone_long and not await store.claimed_by(dead):
            log.info("forgetting runner %s (gone since %.0f)", dead, last_beat)
            await runner.forget(dead)
    return outcomes


async def reap_loop(runner: RecoveryContext) -> None:
    while not runner.stopping.is_set():
        try:
            await reap_dead(runner)
        except Exception as e:  # Redis restarting: try again at the next scan
            log.warning("scanning for dead runners failed: %s", e)
        try:
            await asyncio.wait_for(runner.stopping.wait(), runner.reap_interval)
        except asyncio.TimeoutError:
            pass


async def reconcile(runner: RecoveryContext) -> set[str]:
    """Adopt or remove this runner's containers; settle its claimed jobs. Returns adopted."""
    adopted: set[str] = set()
    for container_id, job_id, status in await runner.launcher.containers_of(runner.runner_id):
        job = await _job(runner, job_id)
        mine = (job.get("state") == J.RUNNING and job.get("runner") == runner.runner_id
                and job.get("container") == container_id)
        if mine and status == "running":
            log.info("adopting container %s of job %s", container_id[:12], job_id)
            runner.adopt(job_id, container_id, job.get("image", ""))
            adopted.add(job_id)
            continue
        if mine:  # it ended while the runner was away
            info = await runner.launcher.exit_info(container_id)
            await runner.store.fail(job_id, exit_message(info), info.code)
        log.info("removing orphan container %s (job %s)", container_id[:12], job_id or "?")
        await runner.launcher.remove(container_id, grace=2)
    for job_id in await runner.store.claimed_by(runner.runner_id):
        if job_id not in adopted:
            await _settle(runner, job_id)
    return adopted


async def _job(runner: RecoveryContext, job_id: str) -> dict[str, str]:
    try:
        return await runner.store.find(job_id) if job_id else {}
    except ValueError:  # a label that is no job id (keys.check_id)
        return {}


async def _settle(runner: RecoveryContext, job_id: str) -> None:
    """A claimed job with no container after a restart."""
    me, store = runner.runner_id, runner.store
    state = await store.state(job_id)
    if state == J.STOPPING:
        await store.move(job_id, J.STOPPED, "Stopped (the runner restarted)",
                         allowed_from=[J.STOPPING], exit_code="0")
        await store.release(me, job_id)
    elif state == J.QUEUED or state in J.EARLY:
        await store.reap(me, job_id, f"Runner {me} restarted; the job went back to the queue",
                         require_dead=False)
    else:
        await store.reap(me, job_id, "The notebook's container is gone (its runner restarted)",
                         mode="fail", require_dead=False)
