"""Which image a commit needs (environment hash), and eviction past the disk budget."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from booklab_spawner.runner import imagekey, tree
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

    async def env(self) -> imagekey.Environment:
        return await imagekey.environment(str(self.path / ".git"), "HEAD", 1000, "jovyan")

    def link(self, name: str, target: str) -> None:
        (self.path / name).symlink_to(target)


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
    # a Dockerfile that COPYs the repository, or may read any of it
    {"Dockerfile": "FROM x\nCOPY . /src\n"},
    {"Dockerfile": "FROM x\nCOPY ./ /src\n"},
    {"Dockerfile": "FROM x\nARG F=a.ipynb\nCOPY $F /src/\n"},
    {"Dockerfile": "FROM x\nRUN --mount=target=/src pip install /src\n"},
    {"Dockerfile": "# syntax=docker/dockerfile:1\nFROM x\nCOPY env.yml /x\n"},
    {"Dockerfile": "FROM x\nCOPY <<EOF /x\nhi\nEOF\n"},
    {"Dockerfile": "FROM x\nONBUILD COPY env.yml /x\n"},
    {"binder/Dockerfile": "FROM x\nCOPY . /src\n", "binder/requirements.txt": "x\n"},
    {"Dockerfile": "FROM x\nCOPY env.yml /x\n", "postBuild": "#!/bin/sh\n"},
])
async def test_builds_that_read_every_file_key_on_the_whole_tree(repo, files):
    repo.commit({**files, "a.ipynb": "{}"})
    base = await repo.env()
    assert base.whole_tree
    repo.commit({"a.ipynb": '{"changed": 1}'})
    assert (await repo.env()).hash != base.hash


@pytest.mark.parametrize("dockerfile, read", [
    ("FROM x\nCOPY --chown=1000:1000 env/ requirements.txt /tmp/\nRUN pip install x\n",
     ("Dockerfile", "env/a.yml", "env/sub/b.yml", "requirements.txt")),
    ('FROM x\nCOPY ["requirements.txt", "/tmp/"]\n', ("Dockerfile", "requirements.txt")),
    ("FROM x\nCOPY *.txt /tmp/\n", ("Dockerfile", "requirements.txt")),
    ("FROM x\nRUN echo \\\n  hi\nCOPY \\\n  env /e/\n",
     ("Dockerfile", "env/a.yml", "env/sub/b.yml")),
    ("FROM x AS b\nRUN --mount=type=cache,target=/root/.cache echo\n"
     "FROM x\nCOPY --from=b /opt /opt\nADD https://example.org/f /f\n", ("Dockerfile",)),
])
async def test_a_dockerfile_is_keyed_on_the_files_it_reads(repo, dockerfile, read):
    """repo2docker builds a Dockerfile alone, and it reads the repository only through
    COPY/ADD: a notebook-only commit keeps the image, a file it copies does not."""
    repo.commit({"Dockerfile": dockerfile, "requirements.txt": "numpy\n", "a.ipynb": "{}",
                 "env/a.yml": "a: 1\n", "env/sub/b.yml": "b: 1\n", "data/x.csv": "1\n"})
    base = await repo.env()
    assert not base.whole_tree and base.files == read
    repo.commit({"a.ipynb": '{"changed": 1}', "b.ipynb": "{}"})
    assert (await repo.env()).hash == base.hash
    for path in read:
        repo.commit({path: repo.path.joinpath(path).read_text() + "# changed\n"})
        assert (await repo.env()).hash != base.hash, path
        base = await repo.env()


async def test_a_copied_link_keys_a_dockerfile_on_the_whole_tree(repo):
    repo.commit({"Dockerfile": "FROM x\nCOPY env/ /e/\n", "real.yml": "a: 1\n"})
    repo.link("env", "real.yml")
    repo.commit({})
    assert (await repo.env()).whole_tree


def test_image_name_is_readable_before_the_tag_and_unguessable_after_it():
    key = imagekey.name_key("t" * 64)
    name = imagekey.image_name("booklab/", "42", "Group/My Project", "ab" * 32, key)
    assert name.startswith("booklab/42-group-my-project:env-")
    tag = name.split(":env-")[1]
    assert len(tag) == 32 and "ab" * 8 not in tag
    # another runner token, another project: another name
    assert imagekey.image_name("booklab/", "42", "Group/My Project", "ab" * 32,
                            imagekey.name_key("u" * 64)) != name
    assert imagekey.image_name("booklab/", "43", "Group/My Project", "ab" * 32, key) != name


async def test_a_linked_environment_file_keys_on_the_whole_tree(repo):
    repo.commit({"envs/req.txt": "numpy\n", "a.ipynb": "{}"})
    repo.link("requirements.txt", "envs/req.txt")
    repo.commit({})
    base = await repo.env()
    assert base.whole_tree  # its content is another file's: any change may matter
    repo.commit({"envs/req.txt": "numpy\npandas\n"})
    assert (await repo.env()).hash != base.hash


@pytest.mark.parametrize("name", ["requirements.txt", "pyproject.toml"])
async def test_classifying_files_never_follows_a_link_out_of_the_repository(repo, name):
    # read through the link, /dev/zero would never end; git's object store holds the
    # link's target text, which is all Booklab reads
    repo.link(name, "/dev/zero")
    repo.commit({"a.ipynb": "{}"})
    env = await asyncio.wait_for(repo.env(), 30)
    assert env.whole_tree and name in env.files


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


def test_an_environment_keyed_build_sees_only_its_environment_files(tmp_path):
    root = tmp_path / "checkout"
    (root / "binder").mkdir(parents=True)
    (root / "binder" / "requirements.txt").write_text("numpy\n")
    (root / "binder" / "apt.txt").write_text("curl\n")
    (root / "secret-notebook.ipynb").write_text("{}")
    context = tree.build_context(str(root), str(tmp_path / "ctx"),
                                 ("binder/apt.txt", "binder/requirements.txt"))
    found = sorted(str(p.relative_to(context)) for p in Path(context).rglob("*"))
    assert found == ["binder", "binder/apt.txt", "binder/requirements.txt"]
    # keyed on the whole tree: the checkout itself (it has no .git)
    assert tree.build_context(str(root), str(tmp_path / "ctx2"), None) == str(root)
