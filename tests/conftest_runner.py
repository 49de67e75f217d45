"""Fixtures for the runner tests: real ``booklab-runner`` processes, the GitLab
double with git over SSH, and a stand-in for the hub's side of a launch.

Everything these tests leave on Docker is named for them: runner ids start
with ``rt-``, images with ``booklab-rt/``; both are removed at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import secrets
import shutil
import tempfile
import time

import pytest
import requests

from booklab_spawner import runnerconf as confmod
from booklab_spawner.crypto import SecretBox, Signer
from booklab_spawner.jobrequest import JobRequest
from booklab_spawner.jobs import CLONE_RENEWED, JobStore, new_job_id
from booklab_spawner.runner.network import LABEL as NETWORK_LABEL
from booklab_spawner.runner.network import NotebookNetwork
from tests.conftest_stack import DEMO_DOCKERFILE, RunnerProcess, notebook
from tests.gitlab_double import GitLabDouble
from tests.services import (
    remove_images,
    remove_runner_containers,
    require_docker,
    require_image,
)

RT_IMAGE_PREFIX = "booklab-rt/"
RT_RUNNER_PREFIX = "rt-"
RT_DOCKERFILE = DEMO_DOCKERFILE
# a notebook-ish server the tests can reach without a hub: Jupyter Server,
# authenticated with JUPYTER_TOKEN (a secret: it travels encrypted)
SERVER_CMD = ["jupyter", "server", "--ServerApp.root_dir=/home/jovyan"]
# bridge-mode notebook networks (and their iptables chains) of this session:
# rt<session><hash of the runner name>, so that concurrent sessions never share one
RT_NETWORK_PREFIX = f"rt{secrets.token_hex(2)}"


def rt_network(runner_name: str) -> str:
    """The notebook network a test runner named ``runner_name`` uses (stable per session)."""
    return f"{RT_NETWORK_PREFIX}{hashlib.sha1(runner_name.encode()).hexdigest()[:8]}"


def remove_rt_networks(client) -> None:
    """Remove this session's notebook networks and their iptables chains and jumps."""
    for net in client.networks.list(filters={"label": NETWORK_LABEL}):
        if net.name.startswith(RT_NETWORK_PREFIX):
            NotebookNetwork(client, net.name).remove()


@pytest.fixture(scope="session")
def rt_docker():
    """The real Docker engine; removes the runner tests' containers and images after."""
    client = require_docker()
    require_image(client)
    yield client
    _cleanup_docker(client)
    remove_rt_networks(client)


# runner ids this test process started: only their containers are removed, so that
# two test sessions on one machine (developers in parallel) leave each other alone
_STARTED: set[str] = set()


def _cleanup_docker(client) -> None:
    remove_runner_containers(client, _STARTED)
    remove_images(client, RT_IMAGE_PREFIX)


@pytest.fixture
def gitlab_ssh():
    """A GitLab double serving git over HTTP and over a real sshd.

    ``gl.known_hosts`` is the sshd's known_hosts line. The data directory is
    outside pytest's 0700 tmp tree, because sshd runs git as the ``git`` user.
    """
    data = tempfile.mkdtemp(prefix="booklab-rt-gitlab-")
    os.chmod(data, 0o755)
    gl = GitLabDouble(data)
    gl.start()
    try:
        gl.known_hosts = gl.start_ssh()
        yield gl
    finally:
        gl.stop()
        shutil.rmtree(data, ignore_errors=True)


class LaunchDouble:
    """Does what the hub's spawner does for a launch, through the same protocol
    functions (conf.publish, JobStore.create), so runners see real jobs."""

    def __init__(self, redis, keys, token: str, gitlab: GitLabDouble, **conf):
        self.store = JobStore(redis, keys)
        self.redis, self.keys = redis, keys
        self.token = token
        self.box = SecretBox(token)
        self.signer = Signer(token)
        self._renewers: list[asyncio.Task] = []
        self._closing = False
        self.gitlab = gitlab
        self.jupyter_token = secrets.token_hex(16)
        self.conf = confmod.RunnerConf(gitlab_url=gitlab.url, network="host",
                                       image_prefix=RT_IMAGE_PREFIX, **conf)

    async def publish(self) -> None:
        await confmod.publish(self.redis, self.keys, self.conf, self.signer)

    async def launch(self, project: str, sha: str, clone: dict | None = None,
                     **fields) -> str:
        """Queue a job for ``project`` at ``sha``; the clone credential defaults to a
        token of the project's first member with the ``read_repository`` scope."""
        await self.publish()
        info = self.gitlab.store.project_by_path(project)
        job_id = new_job_id()
        if clone is None:
            clone = {"method": "token", "username": "oauth2",
                     "password": self.gitlab.issue_token(self.user, ["read_repository"])
                     ["access_token"]}
        base = self.gitlab.url
        request = JobRequest(  # the hub's own record, signature and seal (jobrequest.py)
            user=self.user, server_name="", project=project, project_id=str(info.id),
            ref="main", sha=sha, clone_url=f"{base}/{project}.git",
            clone_method=clone["method"],
            ssh_url=f"ssh://git@127.0.0.1:{getattr(self.gitlab.store, 'ssh_port', 0)}"
                    f"/{project}.git",
            cmd=list(SERVER_CMD), env={"BOOKLAB_TEST": "1"})
        record, blob = dataclasses.replace(request, **fields).sealed(
            job_id, self.token, {"env": {"JUPYTER_TOKEN": self.jupyter_token},
                                 "clone": clone})
        await self.store.create(job_id, record, blob)
        self._renewers.append(asyncio.ensure_future(self._renew_on_requeue(job_id, clone)))
        return job_id

    async def _renew_on_requeue(self, job_id: str, clone: dict) -> None:
        """As the hub does: a job handed back after its fetch (the runner dropped the clone
        credential) gets it again, announced by a ``clone-renewed`` log line."""
        fetched = False
        async for entry in self.store.follow_log(job_id, block_ms=1000,
                                                 until=("running", "stopped", "failed")):
            if self._closing:
                return
            if entry is None or entry.kind != "state":
                continue
            if entry.state not in ("queued", "claimed", "fetching"):
                fetched = True
            elif entry.state == "queued" and fetched:
                job = await self.store.get(job_id)
                sealed = self.box.open(await self.store.secrets(job_id) or "", job)
                rest = {k: v for k, v in sealed.items() if k not in ("job", "bound")}
                await self.store.replace_secrets(
                    job_id, self.box.seal(job_id, job, {**rest, "clone": clone}))
                await self.store.log(job_id, "Clone credential renewed", CLONE_RENEWED)
                fetched = False

    async def close(self) -> None:
        # a flag, not cancel(): redis-py may swallow a cancel during a blocking XREAD
        self._closing = True
        if self._renewers:
            await asyncio.wait(self._renewers, timeout=10)

    user = "alice"

    async def wait_state(self, job_id: str, states: tuple[str, ...] | str,
                         timeout: float = 300) -> dict[str, str]:
        """Follow the job's log until one of ``states``; the job record then."""
        wanted = (states,) if isinstance(states, str) else states
        deadline = time.monotonic() + timeout
        async for entry in self.store.follow_log(job_id, block_ms=1000, until=()):
            if entry is not None and entry.kind == "state" and entry.state in wanted:
                return await self.store.get(job_id)
            if time.monotonic() > deadline:
                job = await self.store.get(job_id)
                raise AssertionError(f"job {job_id} not in {wanted} after {timeout} s: {job}\n"
                                     + await self.log_text(job_id))
        raise AssertionError("log ended")  # pragma: no cover

    async def wait_line(self, job_id: str, text: str, timeout: float = 300) -> str:
        """Follow the job's log until a line containing ``text``; that line."""
        deadline = time.monotonic() + timeout
        async for entry in self.store.follow_log(job_id, block_ms=1000, until=()):
            if entry is not None and text in entry.message:
                return entry.message
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in job {job_id}'s log after {timeout} s:\n"
                                     + await self.log_text(job_id))
        raise AssertionError("log ended")  # pragma: no cover

    async def image_of(self, job_id: str) -> str:
        """The image name the runner announced for the job (its ``building`` entry)."""
        line = await self.wait_line(job_id, "Image ")
        return line.removeprefix("Image ").split(", from ", 1)[0]

    async def stop(self, job_id: str) -> dict[str, str]:
        """Stop as the hub does: ``stopping``, a stop command to its runner, wait."""
        await self.store.transition(job_id, "stopping", "Stopping",
                                    allowed_from=("claimed", "fetching", "building",
                                                  "starting", "running"))
        job = await self.store.get(job_id)
        await self.store.send_command(job["runner"], {"op": "stop", "job": job_id})
        return await self.wait_state(job_id, ("stopped", "failed"), timeout=120)

    async def log_text(self, job_id: str) -> str:
        entries, after = [], "0-0"
        while True:
            batch = await self.store.read_log(job_id, after=after)
            if not batch:
                return "\n".join(entries)
            entries += [f"[{e.kind}:{e.state or e.phase}] {e.message}" for e in batch]
            after = batch[-1].id

    def contents(self, url: str) -> set[str]:
        """File names the notebook server shows in its home, as a browser would list them."""
        r = requests.get(f"{url}/api/contents", timeout=30,
                         headers={"Authorization": f"token {self.jupyter_token}"})
        r.raise_for_status()
        return {item["name"] for item in r.json()["content"]}


def processes_under(work_dir) -> list[str]:
    """Command lines of the live processes that name a path in ``work_dir`` (a runner's
    git, repo2docker and its docker build all do), read from /proc."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:  # gone meanwhile
            continue
        if str(work_dir) in cmd and not zombie and "booklab-runner" not in cmd:
            found.append(cmd)
    return found


@pytest.fixture
def rt_token() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def demo_project(gitlab_ssh):
    """demo/hello on the SSH-enabled double: a Dockerfile repo with one notebook."""
    gl = gitlab_ssh
    gl.add_user("alice", password="alice-pw")
    gl.add_project("demo/hello", files={"Dockerfile": RT_DOCKERFILE, "README.md": "# Hello\n",
                                        "hello.ipynb": notebook("# Hello")})
    gl.add_member("demo/hello", "alice", 40)
    return gl


@pytest.fixture
async def launcher(redis, keys, rt_token, demo_project):
    double = LaunchDouble(redis, keys, rt_token, demo_project)
    yield double
    await double.close()


@pytest.fixture
def rt_runners(redis_server, keys, rt_token, rt_docker, tmp_path, request):
    """Start runners with ``rt_runners.start("a", "--slots=2")`` (id becomes ``rt-a``).

    Each runner gets its own bridge-mode notebook network (:func:`rt_network`),
    removed with its iptables rules at the end."""
    started: list[RunnerProcess] = []
    networks: set[str] = set()

    class Factory:
        def start(self, name: str, *extra: str) -> RunnerProcess:
            work = tmp_path / f"work-{name}"
            work.mkdir(exist_ok=True)
            if not any(e.startswith("--notebook-network") for e in extra):
                extra = (f"--notebook-network={rt_network(name)}", *extra)
            networks.update(e.split("=", 1)[1] for e in extra
                            if e.startswith("--notebook-network="))
            proc = RunnerProcess(f"{RT_RUNNER_PREFIX}{name}", redis_server.url, rt_token,
                                 work, *extra, key_prefix=keys.prefix)
            started.append(proc)
            _STARTED.add(proc.runner_id)
            return proc

    yield Factory()
    for proc in started:
        proc.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for proc in started:
            print(f"\n===== {proc.runner_id} log =====\n{proc.output()[-6000:]}")
    remove_runner_containers(rt_docker, {proc.runner_id for proc in started})
    for name in networks:
        NotebookNetwork(rt_docker, name).remove()
