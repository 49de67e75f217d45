"""Hostile repositories launched on a real runner: nothing of theirs reaches the host.

Each test commits a repository an attacker could push to the GitLab double, queues
it through the Redis protocol (as the hub would) on a real ``booklab-runner`` with
the real dockerd and repo2docker, and checks what a person would notice: the
launch fails with a message naming the problem, or runs with exactly its own
files; no file on the runner host changes; no other project's data is reachable.
"""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from booklab_spawner.runner import imagekey
from tests.conftest_runner import RT_DOCKERFILE, RT_IMAGE_PREFIX, notebook
from tests.gitlab_double.gitrepo import Executable, Symlink
from tests.services import NOTEBOOK_IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def ls_home(docker, job: dict[str, str]) -> set[str]:
    """Every path under the notebook's home, as the notebook user would find them."""
    container = docker.containers.get(job["container"])
    code, out = container.exec_run(["find", "/home/jovyan", "-mindepth", "1"], user="1000")
    assert code == 0, out
    return {line[len("/home/jovyan/"):] for line in out.decode().splitlines()}


def token_for(gl, user: str) -> dict[str, str]:
    return {"method": "token", "username": "oauth2",
            "password": gl.issue_token(user, ["read_repository"])["access_token"]}


async def test_git_config_in_the_repository_configures_nothing_on_the_runner(
        launcher, rt_runners, rt_docker, demo_project, tmp_path):
    """A committed .gitconfig (git's global config when HOME is the checkout), an XDG
    config, attributes naming filters and an include: none of it reaches git."""
    markers = {name: tmp_path / f"planted-{name}" for name in
               ("trace2", "fsmonitor", "smudge", "xdg", "include", "pager", "hook")}
    gitconfig = (
        f"[trace2]\n\teventTarget = {markers['trace2']}\n\tnormalTarget = {markers['trace2']}\n"
        f"[core]\n\tfsmonitor = \"touch {markers['fsmonitor']}\"\n"
        f"\tpager = touch {markers['pager']}\n"
        "\thooksPath = .githooks\n"
        f"[filter \"evil\"]\n\tsmudge = \"touch {markers['smudge']}; cat\"\n"
        "\trequired = true\n"
        "[include]\n\tpath = .config/extra\n"
    )
    sha = demo_project.commit("demo/hello", "main", {
        ".gitconfig": gitconfig,
        ".config/git/config": f"[trace2]\n\teventTarget = {markers['xdg']}\n",
        ".config/extra": f"[trace2]\n\tperfTarget = {markers['include']}\n",
        ".gitattributes": "*.ipynb filter=evil\n",
        ".githooks/post-checkout": Executable(f"#!/bin/sh\ntouch {markers['hook']}\n"),
        ".githooks/reference-transaction": Executable(f"#!/bin/sh\ntouch {markers['hook']}\n"),
    })
    rt_runners.start("gitcfg")
    job_id = await launcher.launch("demo/hello", sha)
    job = await launcher.wait_state(job_id, ("running", "failed"))
    assert job["state"] == "running", await launcher.log_text(job_id)
    planted = sorted(name for name, path in markers.items() if path.exists())
    assert planted == [], f"the repository's git config ran on the runner: {planted}"
    # the files are plain data in the notebook
    assert {".gitconfig", ".gitattributes", "hello.ipynb"} <= ls_home(rt_docker, job)
    await launcher.stop(job_id)


@pytest.mark.parametrize("files, link", [
    ({"requirements.txt": Symlink("/dev/zero")}, "requirements.txt"),
    ({"apt.txt": Symlink("{secret}")}, "apt.txt"),
    ({"Dockerfile": Symlink("{secret}")}, "Dockerfile"),
    ({"binder": Symlink("/etc")}, "binder"),
    ({"pyproject.toml": Symlink("../../../../../../../../{secret}")}, "pyproject.toml"),
    # each link stays inside, the chain does not: here -> ".", then here/..
    ({"here": Symlink("."), "environment.yml": Symlink("here/../../../../../{secret}")},
     "environment.yml"),
    ({"data/notes.md": Symlink("/root/.bashrc")}, "data/notes.md"),
], ids=["dev-zero", "host-file", "dockerfile", "binder-dir", "dotdot", "chain", "any-file"])
async def test_a_link_out_of_the_repository_fails_the_launch_naming_it(
        launcher, rt_runners, rt_docker, demo_project, tmp_path, files, link):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("FROM booklab-test/notebook:latest\nRUN echo HOST-SECRET-LINE\n")
    files = {p: Symlink(v.target.format(secret=secret)) for p, v in files.items()}
    sha = demo_project.commit("demo/hello", "main", files)
    rt_runners.start("links")
    job_id = await launcher.launch("demo/hello", sha)
    job = await launcher.wait_state(job_id, ("running", "failed"), timeout=120)
    log = await launcher.log_text(job_id)
    assert job["state"] == "failed", log
    assert f"symbolic link '{link}' points outside the repository" in job["error"]
    assert "HOST-SECRET-LINE" not in log
    assert "Built image" not in log and "repo2docker" not in log


async def test_links_inside_the_repository_still_work(
        launcher, rt_runners, rt_docker, demo_project):
    sha = demo_project.commit("demo/hello", "main", {
        "data/table.csv": "a,b\n1,2\n", "table.csv": Symlink("data/table.csv"),
        "notebooks": Symlink("data")})
    rt_runners.start("inlinks")
    job_id = await launcher.launch("demo/hello", sha)
    job = await launcher.wait_state(job_id, ("running", "failed"))
    assert job["state"] == "running", await launcher.log_text(job_id)
    container = rt_docker.containers.get(job["container"])
    code, out = container.exec_run(["cat", "/home/jovyan/table.csv"], user="1000")
    assert (code, out) == (0, b"a,b\n1,2\n")
    await launcher.stop(job_id)


def old_image_name(gl, project: str, files: dict[str, str]) -> str:
    """The image name main (before issue 8) gave a project: public inputs only.

    Anyone can compute it for any project whose environment files they can guess
    (here the very common one-line Dockerfile of the victim)."""
    digest = hashlib.sha256()
    for part in ("booklab-env-v1", imagekey._r2d_version(), "1000", "jovyan"):
        digest.update(part.encode() + b"\0")
    for path in sorted(files):
        blob = subprocess.run(["git", "hash-object", "--stdin"], input=files[path].encode(),
                              capture_output=True, check=True).stdout.decode().strip()
        digest.update(f"100644 {blob} {path}\0".encode())
    info = gl.store.project_by_path(project)
    slug = project.replace("/", "-")
    return f"{RT_IMAGE_PREFIX}{info.id}-{slug}:env-{digest.hexdigest()[:16]}"


async def test_a_build_cannot_start_from_another_projects_image(
        launcher, rt_runners, rt_docker, demo_project):
    gl = demo_project
    gl.add_project("lab/private", files={"Dockerfile": RT_DOCKERFILE,
                                         "results.ipynb": notebook("TOP-SECRET-RESULT-42")})
    gl.add_member("lab/private", "alice", 40)
    gl.add_user("mallory", password="mallory-pw")
    rt_runners.start("from")
    victim = await launcher.launch("lab/private", gl.commit("lab/private", "main", {}))
    victim_job = await launcher.wait_state(victim, "running")
    await launcher.stop(victim)
    assert rt_docker.images.get(victim_job["image"])  # the victim's image is on the runner

    guess = old_image_name(gl, "lab/private", {"Dockerfile": RT_DOCKERFILE})
    gl.add_project("mallory/steal", files={
        "Dockerfile": f"FROM {guess}\nRUN cat /home/jovyan/results.ipynb\n"})
    gl.add_member("mallory/steal", "mallory", 40)
    thief = await launcher.launch("mallory/steal", gl.commit("mallory/steal", "main", {}),
                                  clone=token_for(gl, "mallory"), user="mallory")
    job = await launcher.wait_state(thief, ("running", "failed"))
    log = await launcher.log_text(thief)
    assert job["state"] == "failed", log
    assert "TOP-SECRET-RESULT-42" not in log


async def test_projects_with_the_same_environment_never_share_an_image(
        launcher, rt_runners, rt_docker, demo_project):
    gl = demo_project
    for name in ("lab/one", "lab/two"):
        gl.add_project(name, files={"Dockerfile": RT_DOCKERFILE})
        gl.add_member(name, "alice", 40)
    rt_runners.start("twins")
    images = []
    for name in ("lab/one", "lab/two"):
        job_id = await launcher.launch(name, gl.commit(name, "main", {}))
        images.append((await launcher.wait_state(job_id, "running"))["image"])
        await launcher.stop(job_id)
    assert images[0].split(":")[1] != images[1].split(":")[1]
    # names: readable project part, a tag that is no hash anyone could recompute
    assert images[0].startswith(RT_IMAGE_PREFIX) and len(images[0].split(":env-")[1]) == 32


async def test_a_launch_shows_exactly_the_files_of_its_commit(
        launcher, rt_runners, rt_docker, demo_project):
    gl = demo_project
    main = gl.commit("demo/hello", "main", {"data.csv": "1\n"})
    # a branch with the same environment plants a server config and a file
    evil = gl.commit("demo/hello", "evil", {
        ".jupyter/jupyter_server_config.py": "c.ServerApp.disable_check_xsrf = True\n",
        "planted.txt": "from the evil branch\n"})
    rt_runners.start("exact")
    first = await launcher.launch("demo/hello", evil)
    evil_job = await launcher.wait_state(first, "running")
    assert {"planted.txt", ".jupyter/jupyter_server_config.py"} <= ls_home(rt_docker, evil_job)
    await launcher.stop(first)

    second = await launcher.launch("demo/hello", main)
    job = await launcher.wait_state(second, "running")
    files = ls_home(rt_docker, job)
    assert "planted.txt" not in files and ".jupyter/jupyter_server_config.py" not in files
    assert not any(f == ".git" or f.startswith(".git/") for f in files), files
    assert {"hello.ipynb", "data.csv", "Dockerfile"} <= files
    await launcher.stop(second)

    # a file deleted on main is gone from the next launch, too
    third = await launcher.launch("demo/hello", gl.commit("demo/hello", "main",
                                                          {"data.csv": None}))
    job3 = await launcher.wait_state(third, "running")
    assert "data.csv" not in ls_home(rt_docker, job3)
    await launcher.stop(third)


async def test_environment_keyed_image_is_reused_with_each_commits_own_files(
        launcher, rt_runners, rt_docker, demo_project, rt_token):
    """A repository without a Dockerfile (repo2docker's build packs) keys its image on
    its environment files only. Build packs need the internet, so the image the
    runner would build is made here by tagging the local base image."""
    gl = demo_project
    gl.add_project("lab/pip", files={"requirements.txt": "numpy\n",
                                     "a.ipynb": notebook("# a")})
    gl.add_member("lab/pip", "alice", 40)
    info = gl.store.project_by_path("lab/pip")
    first = gl.commit("lab/pip", "main", {"notes.md": "one\n"})
    env = await imagekey.environment(str(info.repo_dir), first, 1000, "jovyan")
    assert not env.whole_tree and env.files == ("requirements.txt",)
    image = imagekey.image_name(RT_IMAGE_PREFIX, str(info.id), "lab/pip", env.hash,
                             imagekey.name_key(rt_token))
    rt_docker.images.get(NOTEBOOK_IMAGE).tag(*image.split(":"))
    rt_runners.start("envkey")

    job_id = await launcher.launch("lab/pip", first)
    job = await launcher.wait_state(job_id, "running")
    assert job["image"] == image
    assert "already exists: reusing it" in await launcher.log_text(job_id)
    assert {"a.ipynb", "notes.md", "requirements.txt"} <= ls_home(rt_docker, job)
    await launcher.stop(job_id)

    second = gl.commit("lab/pip", "main", {"a.ipynb": None, "b.ipynb": notebook("# b")})
    job_id = await launcher.launch("lab/pip", second)
    job = await launcher.wait_state(job_id, "running")
    assert job["image"] == image
    files = ls_home(rt_docker, job)
    assert "b.ipynb" in files and "a.ipynb" not in files
    await launcher.stop(job_id)
