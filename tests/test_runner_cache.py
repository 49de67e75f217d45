"""Image cache: which commits share an image, and one build per image across runners."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest_runner import notebook
from tests.conftest_stack import slow_build_step

pytestmark = [pytest.mark.docker, pytest.mark.slow]


async def test_a_dockerfile_repository_is_keyed_on_its_whole_tree(
        launcher, rt_runners, rt_docker, demo_project):
    """A Dockerfile may COPY and RUN any file, so any commit gets its own image; the
    same commit launched again reuses it. (Repositories without a Dockerfile key on
    their environment files: tests/test_hostile_repos.py.)"""
    rt_runners.start("cache")
    sha = demo_project.commit("demo/hello", "main", {"first.ipynb": notebook("# one")})
    first = await launcher.launch("demo/hello", sha)
    job = await launcher.wait_state(first, "running")
    log = await launcher.log_text(first)
    assert "Built image" in log and "from the whole repository" in log
    assert {"hello.ipynb", "first.ipynb"} <= launcher.contents(job["url"])
    built_id = rt_docker.images.get(job["image"]).id
    assert (await launcher.stop(first))["state"] == "stopped"

    # the same commit again: same image, no build
    again = await launcher.launch("demo/hello", sha)
    job_again = await launcher.wait_state(again, "running")
    assert job_again["image"] == job["image"]
    assert rt_docker.images.get(job_again["image"]).id == built_id  # the same image, not rebuilt
    log_again = await launcher.log_text(again)
    assert "already exists: reusing it, no build needed" in log_again
    assert "Built image" not in log_again
    await launcher.stop(again)

    # a commit that only adds a notebook: a new image (the Dockerfile's COPY sees it)
    sha2 = demo_project.commit("demo/hello", "main", {"second.ipynb": notebook("# two")})
    second = await launcher.launch("demo/hello", sha2)
    job2 = await launcher.wait_state(second, "running")
    assert job2["image"] != job["image"]
    assert rt_docker.images.get(job2["image"]).id != built_id
    assert "Built image" in await launcher.log_text(second)
    assert {"hello.ipynb", "first.ipynb", "second.ipynb"} <= launcher.contents(job2["url"])
    await launcher.stop(second)


async def test_a_dockerfile_that_copies_only_its_environment_keeps_its_image(
        launcher, rt_runners, rt_docker, demo_project):
    """A Dockerfile that COPYs only what the environment needs is keyed on that: a
    notebook-only commit starts on the image of the commit before, without a build,
    and shows its own notebooks; the image holds none of them (they come at start)."""
    from tests.conftest_runner import RT_DOCKERFILE
    rt_runners.start("cache")
    narrow = RT_DOCKERFILE.replace("COPY --chown=1000:1000 . /home/jovyan/",
                                   "COPY env/ /opt/env/")
    assert narrow != RT_DOCKERFILE
    sha = demo_project.commit("demo/hello", "main", {"Dockerfile": narrow,
                                                     "env/settings.txt": "x=1\n"})
    first = await launcher.launch("demo/hello", sha)
    job = await launcher.wait_state(first, "running")
    log = await launcher.log_text(first)
    assert "Built image" in log and "Dockerfile, env/settings.txt" in log
    built_id = rt_docker.images.get(job["image"]).id
    await launcher.stop(first)

    sha2 = demo_project.commit("demo/hello", "main", {"later.ipynb": notebook("# later")})
    second = await launcher.launch("demo/hello", sha2)
    job2 = await launcher.wait_state(second, "running")
    assert job2["image"] == job["image"]
    assert rt_docker.images.get(job2["image"]).id == built_id
    log2 = await launcher.log_text(second)
    assert "already exists: reusing it, no build needed" in log2 and "Built image" not in log2
    assert {"hello.ipynb", "later.ipynb"} <= launcher.contents(job2["url"])
    listing = rt_docker.containers.run(job["image"], ["ls", "-a", "/home/jovyan", "/opt/env"],
                                       remove=True, user="1000").decode()
    assert "settings.txt" in listing and "hello.ipynb" not in listing, listing
    await launcher.stop(second)


def demo_project_dockerfile() -> str:
    from tests.conftest_runner import RT_DOCKERFILE
    return RT_DOCKERFILE


async def test_two_concurrent_jobs_for_one_image_build_once(
        launcher, rt_runners, rt_docker, demo_project):
    # a build slow enough that the second job arrives while it runs
    sha = demo_project.commit("demo/hello", "main", {
        "Dockerfile": demo_project_dockerfile() + slow_build_step("dedupe", 8)})
    rt_runners.start("dedupe-a")
    rt_runners.start("dedupe-b")
    jobs = [await launcher.launch("demo/hello", sha) for _ in range(2)]
    done = await asyncio.gather(*(launcher.wait_state(j, "running") for j in jobs))
    assert {d["runner"] for d in done} == {"rt-dedupe-a", "rt-dedupe-b"}
    assert done[0]["image"] == done[1]["image"]
    logs = [await launcher.log_text(j) for j in jobs]
    waiters = [log for log in logs if "waiting for that build, its log follows" in log]
    builders = [log for log in logs if log not in waiters]
    assert len(builders) == 1 and len(waiters) == 1, logs
    assert "Built image" in builders[0]
    # the waiting job's user saw repo2docker's lines of the other job's build,
    # then used the image it produced
    assert "sleep 8" in waiters[0]
    assert waiters[0].index("sleep 8") < waiters[0].index("already exists: reusing it")
    for j in jobs:
        await launcher.stop(j)
