"""A job cut short on a real runner: by the build timeout, or by a stop while it fetches
or builds. Each time the user sees why, nothing of the build lives on (no git or
repo2docker process, no build lock, no container), and the runner's one slot takes the
next job."""

from __future__ import annotations

import pytest

from booklab_spawner.runner.cache import image_key
from tests.conftest_runner import RT_DOCKERFILE, processes_under
from tests.conftest_stack import slow_build_step

pytestmark = [pytest.mark.docker, pytest.mark.slow]


async def assert_slot_free(launcher, demo_project) -> None:
    """The runner (one slot) takes and runs a next job."""
    sha = demo_project.commit("demo/hello", "main", {"Dockerfile": RT_DOCKERFILE})
    job_id = await launcher.launch("demo/hello", sha)
    await launcher.wait_state(job_id, "running")
    await launcher.stop(job_id)


async def test_build_over_the_build_timeout_fails_and_leaves_nothing_behind(
        launcher, rt_runners, rt_docker, demo_project, redis, keys):
    """conf ``build_timeout`` is what the runner applies: a build step longer than it
    fails the job with a message naming the timeout and the setting, repo2docker is
    killed, the build lock is released, and the runner goes on with the next job."""
    launcher.conf.build_timeout = 20
    runner = rt_runners.start("timeout")
    sha = demo_project.commit("demo/hello", "main", {
        "Dockerfile": RT_DOCKERFILE + slow_build_step("endless-step", 600)})
    job_id = await launcher.launch("demo/hello", sha)
    lock = keys.build_lock(image_key(await launcher.image_of(job_id)))
    await launcher.wait_line(job_id, "endless-step")
    assert await redis.get(lock) == f"rt-timeout {job_id}"
    assert any("repo2docker" in cmd for cmd in processes_under(runner.work_dir))

    job = await launcher.wait_state(job_id, ("failed", "stopped"))
    assert job["state"] == "failed"
    assert job["error"].startswith("The build took longer than the build timeout (20 s)")
    assert "runners.build_timeout" in job["error"]
    assert processes_under(runner.work_dir) == []
    assert not await redis.exists(lock)
    await assert_slot_free(launcher, demo_project)
