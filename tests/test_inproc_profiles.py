"""Launch profiles through the in-process hub's REST API: a launch names a profile in
user_options; one it may not have is refused with 400 and a sentence saying why, and
nothing is queued; an allowed one lands in its profile's queue with its labels and
limits in the signed job record."""

from __future__ import annotations

import asyncio
import json

import pytest

from booklab_spawner import registry
from booklab_spawner.redis_client import get_redis
from tests.conftest_mockhub import WAIT_LIMIT

pytestmark = pytest.mark.inproc

PROFILES = [
    {"name": "gpu", "description": "One A100", "labels": {"gpu": "a100"}, "gpus": 1,
     "groups": ["gpu-lab"]},
    {"name": "big", "description": "64 GB machines", "labels": {"mem": "64G"},
     "mem_limit": "8G", "cpu_limit": 2, "max_per_user": 1},
]
LAUNCH = {"project": "demo/hello", "ref": "main"}


async def _runner(hub, runner_id: str, labels: dict[str, str]) -> None:
    await registry.register(get_redis(hub.redis_url), hub.keys, runner_id,
                            {"host": "127.0.0.1", "slots": 1, "labels": json.dumps(labels)})


async def _nothing_queued(hub, user: str) -> None:
    assert await hub.jobs(user) == []
    for profile in ("default", "gpu", "big"):
        assert await hub.store.queued(profile) == [], profile


async def test_refused_profiles_say_why_and_queue_nothing(inproc_hub):
    hub = await inproc_hub({"profiles": PROFILES})
    hub.gitlab.add_group("gpu-lab")
    await hub.login("alice")
    refused = [
        ({"profile": "huge"}, "Unknown launch profile 'huge': choose one of default, gpu, "
                              "big"),
        ({"profile": "../x"}, "A launch profile name is 1-30 of a-z, 0-9 and -"),
        ({"profile": "gpu"}, "Launch profile 'gpu' is for members of the GitLab group(s) "
                             "gpu-lab: you are in none of them; pick another profile"),
        ({"profile": "big"}, "No live runner can take launch profile 'big' (it needs "
                             "mem=64G; 1 runner(s) alive): pick another profile or ask the "
                             "hub's operator"),
    ]
    await _runner(hub, "small-1", {"cpus": "2", "gpus": "0"})  # without the labels
    for extra, message in refused:
        assert await hub.spawn_error("alice", "one", {**LAUNCH, **extra}) == (400, message)
        await _nothing_queued(hub, "alice")
    # a member of the group gets past the group check; no runner has a GPU
    hub.gitlab.add_member("gpu-lab", "alice", 30)
    await _runner(hub, "gpu-1", {"gpu": "a100", "gpus": "0"})  # the label, no GPU
    status, message = await hub.spawn_error("alice", "one", {**LAUNCH, "profile": "gpu"})
    assert (status, message.split(" (")[0]) == (400, "No live runner can take launch "
                                                     "profile 'gpu'")
    assert "gpu=a100, 1 GPU(s)" in message
    await _nothing_queued(hub, "alice")


async def test_an_allowed_profile_is_queued_with_its_labels_and_limits(inproc_hub):
    hub = await inproc_hub({"profiles": PROFILES})
    await hub.login("alice")
    await _runner(hub, "big-1", {"mem": "64G"})
    request = asyncio.ensure_future(hub.spawn("alice", "one", {**LAUNCH, "profile": "big"}))
    # only a runner that serves the profile's queue gets it
    job_id = await hub.store.claim("big-1", 30, profiles=["big"])
    assert job_id
    job = await hub.store.get(job_id)
    assert (job["profile"], json.loads(job["labels"]), job["mem_limit"], job["cpu_limit"],
            job["gpus"]) == ("big", {"mem": "64G"}, "8G", "2.0", "")
    assert await hub.store.queued("default") == []
    # max_per_user 1: while this one launches, a second server of it is refused
    status, message = await hub.spawn_error("alice", "two", {**LAUNCH, "profile": "big"})
    assert (status, message) == (400, "You already run 1 server(s) with launch profile "
                                      "'big', as many as it allows: stop one first")
    await hub.store.fail(job_id, "The test's runner ended this launch")
    await asyncio.wait_for(request, 60)


async def test_a_launch_no_runner_serves_waits_saying_so_then_times_out(inproc_hub):
    """Queued while no runner was alive (a launch then waits, as any launch does); the
    runner that comes lacks the label: the job's log says why it waits, and the queue
    timeout's message names the profile's needs."""
    hub = await inproc_hub({"profiles": PROFILES, "runners": {"queue_timeout": 2}})
    await hub.login("alice")
    request = asyncio.ensure_future(hub.spawn("alice", "one", {**LAUNCH, "profile": "big"}))
    for _ in range(200):
        jobs = await hub.jobs("alice")
        if jobs:
            break
        await asyncio.sleep(0.05)
    (job,) = jobs
    await _runner(hub, "small-1", {"cpus": "2"})
    r = await asyncio.wait_for(request, WAIT_LIMIT)
    message = ("No runner took the job within 2 s — none of the 1 live runner(s) offers what "
               "launch profile 'big' needs (mem=64G): ask the hub's operator")
    assert (r.status_code, r.json()["message"]) == (504, message)
    lines = [e.message for e in await hub.store.read_log(job["id"]) if e.kind == "log"]
    assert any(line.startswith("Waiting for a runner: ") and line.endswith(
        "; the launch waits up to 2 s") for line in lines), lines
    assert await hub.store.queued("big") == []
