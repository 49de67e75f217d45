"""A job cut short on a real runner: by the build timeout, or by a stop while it fetches
or builds. Each time the user sees why, nothing of the build lives on (no git or
repo2docker process, no build lock, no container), and the runner's one slot takes the
next job."""

from __future__ import annotations

import pytest

from booklab_spawner.runner.imagekey import image_key
from tests.conftest_hub import wait_until
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
    launcher.conf.build_timeout = 12  # long enough to see the build, lock and repo2docker
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
    assert job["error"].startswith("The build took longer than the build timeout (12 s)")
    assert "runners.build_timeout" in job["error"]
    assert processes_under(runner.work_dir) == []
    assert not await redis.exists(lock)
    await assert_slot_free(launcher, demo_project)


def containers_of_job(docker, job_id: str) -> list:
    return docker.containers.list(all=True, filters={"label": f"org.booklab.job={job_id}"})


async def test_stop_during_the_fetch_kills_git_and_frees_the_slot(
        launcher, rt_runners, rt_docker, demo_project):
    """GitLab is slow to answer the fetch: a stop then ends the job ``stopped`` at once
    (git is killed, not awaited), and the runner takes the next job."""
    runner = rt_runners.start("stopfetch")
    release = demo_project.hold()
    try:
        job_id = await launcher.launch("demo/hello", demo_project.commit(
            "demo/hello", "main", {"Dockerfile": RT_DOCKERFILE}))
        await launcher.wait_state(job_id, "fetching")
        wait_until(lambda: any(" fetch " in cmd for cmd in processes_under(runner.work_dir)),
                   60, "git fetch waiting for GitLab", interval=0.1)
        job = await launcher.stop(job_id)
    finally:
        release()
    assert job["state"] == "stopped"
    assert processes_under(runner.work_dir) == []
    assert containers_of_job(rt_docker, job_id) == []
    await assert_slot_free(launcher, demo_project)


async def test_stop_during_the_build_kills_repo2docker_and_releases_the_lock(
        launcher, rt_runners, rt_docker, demo_project, redis, keys):
    """A stop while repo2docker runs ends the job ``stopped``: repo2docker is killed,
    the build lock is released, no container is left, and the slot is free."""
    runner = rt_runners.start("stopbuild")
    job_id = await launcher.launch("demo/hello", demo_project.commit("demo/hello", "main", {
        "Dockerfile": RT_DOCKERFILE + slow_build_step("stopped-step", 600)}))
    lock = keys.build_lock(image_key(await launcher.image_of(job_id)))
    await launcher.wait_line(job_id, "stopped-step")
    assert await redis.get(lock) == f"rt-stopbuild {job_id}"
    assert any("repo2docker" in cmd for cmd in processes_under(runner.work_dir))

    assert (await launcher.stop(job_id))["state"] == "stopped"
    assert processes_under(runner.work_dir) == []
    assert not await redis.exists(lock)
    assert containers_of_job(rt_docker, job_id) == []
    await assert_slot_free(launcher, demo_project)
