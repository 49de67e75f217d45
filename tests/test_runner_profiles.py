"""Real runner processes with different labels: a profile's job lands only on a runner
whose labels satisfy it, with the profile's limits, and a job whose labels a runner
does not offer is failed by it, saying so."""

from __future__ import annotations

import pytest

from tests.conftest_runner import LaunchDouble

pytestmark = pytest.mark.docker

PROFILES = [{"name": "big", "description": "64 GB", "labels": {"mem": "64G"},
             "mem_limit": "1G"}]
BIG = {"profile": "big", "labels": {"mem": "64G"}, "mem_limit": "1G"}


@pytest.fixture
async def profile_launcher(redis, keys, rt_token, demo_project):
    double = LaunchDouble(redis, keys, rt_token, demo_project, profiles=PROFILES)
    yield double
    await double.close()


async def test_a_profile_job_waits_for_a_runner_with_its_labels(
        rt_runners, rt_docker, profile_launcher, demo_project):
    launcher = profile_launcher
    sha = demo_project.commit("demo/hello", "main", {})
    rt_runners.start("plain")
    big = await launcher.launch("demo/hello", sha, **BIG)
    plain = await launcher.launch("demo/hello", sha)
    # the plain runner took the default job queued after the big one: it had its
    # chance at the big one and left it (it does not serve that profile's queue)
    job = await launcher.wait_state(plain, "running")
    assert job["runner"] == "rt-plain"
    assert (await launcher.store.get(big))["state"] == "queued"
    assert await launcher.store.queued("big") == [big]

    rt_runners.start("big", "--label=mem=64G")
    job = await launcher.wait_state(big, "running")
    assert job["runner"] == "rt-big"
    host = rt_docker.containers.get(job["container"]).attrs["HostConfig"]
    assert host["Memory"] == 1024 ** 3 and not host.get("DeviceRequests")
    await launcher.stop(big)
    await launcher.stop(plain)


async def test_a_runner_fails_a_job_whose_labels_it_does_not_offer(
        rt_runners, profile_launcher, demo_project):
    """A job in the default queue whose signed record asks for mem=64G (the profile
    changed after it was queued, or someone moved it): the plain runner refuses it."""
    launcher = profile_launcher
    rt_runners.start("plain")
    job_id = await launcher.launch("demo/hello", demo_project.commit("demo/hello", "main", {}),
                                   labels={"mem": "64G"})
    job = await launcher.wait_state(job_id, "failed")
    assert job["error"] == ("Runner rt-plain does not offer what launch profile 'default' "
                            "needs (labels {'mem': '64G'}, GPUs 0): the profile changed "
                            "since the launch; start it again")


async def test_a_busy_runner_serves_people_in_turn(rt_runners, launcher, demo_project):
    """Fair share with a real runner of one slot: alice's four launches are queued
    before bob's one; bob's comes right after her first, not after her fourth."""
    sha = demo_project.commit("demo/hello", "main", {})
    alice = [await launcher.launch("demo/hello", sha) for _ in range(4)]
    bob = await launcher.launch("demo/hello", sha, user="bob")
    rt_runners.start("fair")  # one slot
    await launcher.wait_state(alice[0], "running")
    for job_id in [*alice[1:], bob]:
        assert (await launcher.store.get(job_id))["state"] == "queued"
    assert await launcher.store.queue_position(bob) == 1  # next, as the page says

    await launcher.stop(alice[0])  # one slot turnover
    await launcher.wait_state(bob, "running")
    for job_id in alice[1:]:
        assert (await launcher.store.get(job_id))["state"] == "queued"
    await launcher.stop(bob)
    await launcher.wait_state(alice[1], "running")  # then hers again, in her order
    await launcher.stop(alice[1])
    for job_id in alice[2:]:
        await launcher.store.cancel_queued(job_id)
