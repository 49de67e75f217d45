"""Each phase of a launch has its own timeout, whose message says which one ran out
(in-process hub, limits of 1 s). The job ends failed with that message, off the
queue; a runner that holds it is told to stop."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest_mockhub import WAIT_LIMIT

pytestmark = pytest.mark.inproc

OPTIONS = {"project": "demo/hello", "ref": "main"}
NO_RUNNER = ("No runner took the job within 1 s — no runner is alive: ask the hub's "
             "operator to start booklab-runner")
ALL_BUSY = "No runner took the job within 1 s — all 1 runners are busy: try again later"
NOT_LISTENING = ("The notebook server did not start within the container start timeout "
                 "(1 s): check the build log for errors of jupyterhub-singleuser, or ask "
                 "the hub's operator to raise runners.container_start_timeout")


async def _no_runner(hub) -> None:
    """Nobody is registered."""


async def _busy_runner(hub) -> None:
    """A live runner is registered but never takes the job."""
    await hub.register_runner()


async def _runner_starts_container(hub) -> None:
    """A runner takes the job and gets as far as starting the container."""
    job_id = await hub.claim()
    for state in ("claimed", "fetching", "building", "starting"):
        await hub.store.transition(job_id, state, state, runner="inproc-runner")


CASES = [
    # runners config, what the runners do, the message; runner told to stop?
    ({"queue_timeout": 1}, _no_runner, NO_RUNNER, False),
    ({"queue_timeout": 1}, _busy_runner, ALL_BUSY, False),
    ({"container_start_timeout": 1}, _runner_starts_container, NOT_LISTENING, True),
]


@pytest.mark.parametrize("config,runners,message,told_to_stop", CASES,
                         ids=["queue-no-runner", "queue-all-busy", "container-start"])
async def test_phase_timeout(inproc_hub, config, runners, message, told_to_stop):
    hub = await inproc_hub({"runners": config})
    await hub.login("alice")
    request = asyncio.ensure_future(hub.spawn("alice", "one", OPTIONS))
    await runners(hub)
    r = await asyncio.wait_for(request, WAIT_LIMIT)
    assert (r.status_code, r.json()["message"]) == (504, message)
    (job,) = await hub.jobs("alice")
    assert (job["state"], job["error"]) == ("failed", message)
    assert await hub.store.queued() == []
    commands = await hub.store.redis.lrange(hub.keys.commands("inproc-runner"), 0, -1)
    expected = [{"op": "stop", "job": job["id"]}] if told_to_stop else []
    assert [json.loads(c) for c in commands] == expected
