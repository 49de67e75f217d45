"""Which image a commit needs (environment hash), and eviction past the disk budget."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from booklab_spawner.runner import cache
from tests.conftest_runner import RT_DOCKERFILE, RT_IMAGE_PREFIX
from tests.services import NOTEBOOK_IMAGE


class Repo:
    """A real git repository whose HEAD the runner would have checked out."""

    def __init__(self, path: Path):
        self.path = path
        self.git("init", "-q")

    def git(self, *args: str) -> None:
        subprocess.run(["git", "-C", str(self.path), "-c", "user.name=t",
                        "-c", "user.email=t@example.com", *args], check=True,
                       capture_output=True)

    def commit(self, files: dict[str, str | None]) -> None:
        for name, text in files.items():
            target = self.path / name
            if text is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", "change")

    async def env(self) -> cache.Environment:
        return await cache.environment(str(self.path), 1000, "jovyan")


@pytest.fixture
def repo(tmp_path) -> Repo:
    (tmp_path / "repo").mkdir()
    return Repo(tmp_path / "repo")


async def test_notebook_changes_keep_the_hash_environment_changes_do_not(repo):
    repo.commit({"requirements.txt": "numpy\n", "a.ipynb": "{}", "data/x.csv": "1"})
    base = await repo.env()
    assert base.files == ("requirements.txt",) and not base.whole_tree
    repo.commit({"a.ipynb": '{"changed": 1}', "b.ipynb": "{}", "data/x.csv": "2"})
    assert (await repo.env()).hash == base.hash
    repo.commit({"requirements.txt": "numpy\npandas\n"})
    assert (await repo.env()).hash != base.hash


async def test_binder_dir_is_the_only_place_read_when_present(repo):
    repo.commit({"binder/environment.yml": "dependencies: [python]\n",
                 "requirements.txt": "ignored-by-repo2docker\n"})
    base = await repo.env()
    assert base.files == ("binder/environment.yml",)
    repo.commit({"requirements.txt": "still ignored\n", "Dockerfile": "FROM x\n"})
    assert (await repo.env()).hash == base.hash
    repo.commit({"binder/apt.txt": "curl\n"})
    assert (await repo.env()).hash != base.hash


@pytest.mark.parametrize("files", [
    {"postBuild": "#!/bin/sh\n", "requirements.txt": "x\n"},
    {"setup.py": "from setuptools import setup\nsetup()\n"},
    {"requirements.txt": "-e .\n"},
    {"pyproject.toml": "[project]\nname='x'\n[build-system]\nrequires=[]\n"},
])
async def test_builds_that_read_every_file_key_on_the_whole_tree(repo, files):
    repo.commit({**files, "a.ipynb": "{}"})
    base = await repo.env()
    assert base.whole_tree
    repo.commit({"a.ipynb": '{"changed": 1}'})
    assert (await repo.env()).hash != base.hash


def test_image_name_is_from_project_id_and_environment():
    name = cache.image_name("booklab/", "42", "Group/My Project", "ab" * 32)
    assert name == "booklab/42-group-my-project:env-abababababababab"


@pytest.mark.docker
@pytest.mark.slow
async def test_images_past_the_budget_are_evicted_least_recently_launched_first(
        launcher, rt_runners, rt_docker, demo_project, redis, keys):
    gl = demo_project
    for name in ("demo/bee", "demo/sea"):
        gl.add_project(name, files={"Dockerfile": RT_DOCKERFILE})
        gl.add_member(name, "alice", 40)
    size = rt_docker.images.get(NOTEBOOK_IMAGE).attrs["Size"]
    # room for two images of this size, not three
    rt_runners.start("disk", f"--image-budget={int(size * 2.5)}")

    async def launch_and_stop(project: str) -> str:
        info = gl.store.project_by_path(project)
        sha = gl.commit(project, info.default_branch, {})
        job_id = await launcher.launch(project, sha)
        job = await launcher.wait_state(job_id, "running")
        await launcher.stop(job_id)
        return job["image"]

    hello = await launch_and_stop("demo/hello")
    bee = await launch_and_stop("demo/bee")
    assert await launch_and_stop("demo/hello") == hello  # hello is now the recent one
    sea = await launch_and_stop("demo/sea")

    present = {t for i in rt_docker.images.list() for t in i.tags
               if t.startswith(RT_IMAGE_PREFIX)}
    assert bee not in present  # least recently launched: evicted
    assert {hello, sea} <= present
    assert set(await redis.hkeys(keys.images("rt-disk"))) == {hello, sea}
    record = await redis.hgetall(keys.runner("rt-disk"))
    assert bee not in json.loads(record.get("images", "[]"))
