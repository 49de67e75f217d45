"""Nothing stuck: a runner killed mid-build, and a runner that restarts."""

from __future__ import annotations

import asyncio
import time

import pytest
from docker.errors import NotFound

from tests.conftest_runner import RT_DOCKERFILE, notebook
from tests.conftest_stack import QUICK_HEARTBEAT, QUICK_HEARTBEAT_TTL, slow_build_step
from tests.services import NOTEBOOK_IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.slow]


async def wait_log(launcher, job_id: str, text: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in await launcher.log_text(job_id):
        assert time.monotonic() < deadline, await launcher.log_text(job_id)
        await asyncio.sleep(0.5)


async def test_sigkill_mid_build_requeues_job_to_another_runner_soon_after_the_ttl(
        launcher, rt_runners, rt_docker, demo_project, redis, keys):
    sha = demo_project.commit("demo/hello", "main", {
        "Dockerfile": RT_DOCKERFILE + slow_build_step("slow-build-step", 8)})
    doomed = rt_runners.start("doomed", *QUICK_HEARTBEAT)
    job_id = await launcher.launch("demo/hello", sha)
    await wait_log(launcher, job_id, "slow-build-step")
    job = await launcher.store.get(job_id)
    assert (job["state"], job["runner"]) == ("building", "rt-doomed")

    reap = 1  # the survivor scans for dead runners every second (default 5)
    rt_runners.start("survivor", f"--reap-interval={reap}")
    doomed.kill()
    killed_at = time.time()

    done = await launcher.wait_state(job_id, "running", timeout=300)
    assert done["runner"] == "rt-survivor"
    entries = await launcher.store.read_log(job_id)
    requeue = next(e for e in entries if e.kind == "state" and e.state == "queued"
                   and e.ts > killed_at)
    assert "Runner rt-doomed stopped answering" in requeue.message
    # the dead builder's lock is broken at once, not waited out (its 30 s TTL)
    assert "Runner rt-doomed stopped answering while it built image" in \
        await launcher.log_text(job_id)
    # the heartbeat expires, then the survivor's next scan requeues it (slack for load)
    assert requeue.ts - killed_at < QUICK_HEARTBEAT_TTL + 3 * reap + 10
    assert await redis.llen(keys.claimed("rt-doomed")) == 0
    await launcher.stop(job_id)


async def test_restart_adopts_its_running_container_and_removes_orphans(
        launcher, rt_runners, rt_docker, demo_project):
    first = rt_runners.start("phoenix")
    sha = demo_project.commit("demo/hello", "main", {"keep.ipynb": notebook("# kept")})
    job_id = await launcher.launch("demo/hello", sha)
    job = await launcher.wait_state(job_id, "running")
    orphan = rt_docker.containers.run(
        NOTEBOOK_IMAGE, ["sleep", "600"], detach=True, name=f"rt-orphan-{job_id}",
        labels={"org.booklab.runner": "rt-phoenix", "org.booklab.job": "no-such-job"})

    first.kill()  # the notebook's container lives on
    assert rt_docker.containers.get(job["container"]).status == "running"
    rt_runners.start("phoenix")  # same id: the same machine coming back

    await wait_log(launcher, job_id, "restarted and adopted this notebook's container")
    deadline = time.monotonic() + 120
    while True:
        try:
            rt_docker.containers.get(orphan.id)
        except NotFound:
            break
        assert time.monotonic() < deadline, "orphan container was not removed"
        await asyncio.sleep(0.5)
    assert (await launcher.store.get(job_id))["state"] == "running"
    assert "keep.ipynb" in launcher.contents(job["url"])

    # adopted means managed again: a stop request removes it
    assert (await launcher.stop(job_id))["state"] == "stopped"
    with pytest.raises(NotFound):
        rt_docker.containers.get(job["container"])


async def test_restart_fails_the_job_whose_container_exited_while_the_runner_was_away(
        launcher, rt_runners, rt_docker, demo_project):
    """A notebook killed while its runner was down: the runner, back with the same id,
    fails the job with the container's exit code (not "running" forever, not adopted)
    and removes the container."""
    first = rt_runners.start("lazarus")
    job_id = await launcher.launch("demo/hello", demo_project.commit("demo/hello", "main", {}))
    job = await launcher.wait_state(job_id, "running")
    first.kill()
    container = rt_docker.containers.get(job["container"])
    container.kill()  # SIGKILL: exit code 137
    container.wait()

    rt_runners.start("lazarus")
    job = await launcher.wait_state(job_id, ("failed", "stopped"))
    assert (job["state"], job["exit_code"]) == ("failed", "137")
    assert job["error"] == "The notebook server exited with code 137"
    try:  # the runner removes it right after failing the job
        rt_docker.api.wait(container.id, condition="removed", timeout=60)
    except NotFound:
        pass  # removed already
    with pytest.raises(NotFound):
        rt_docker.containers.get(container.id)
