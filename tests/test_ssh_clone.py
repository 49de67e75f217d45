"""Deploy-key clones over a real sshd: the double's SSH side, then the runner's."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from tests.conftest_runner import RT_DOCKERFILE
from tests.conftest_stack import slow_build_step

pytestmark = [pytest.mark.docker]


def new_key(tmp_path: Path, name: str) -> tuple[Path, str, str]:
    """(private key file, private key text, public key line) of a fresh ed25519 key."""
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                   check=True)
    return path, path.read_text(), path.with_suffix(".pub").read_text().strip()


def add_deploy_key(gl, project: str, public: str, user: str = "alice") -> int:
    token = gl.issue_token(user, ["api"])["access_token"]
    r = requests.post(f"{gl.url}/api/v4/projects/{project.replace('/', '%2F')}/deploy_keys",
                      headers={"Authorization": f"Bearer {token}"},
                      json={"title": "booklab test", "key": public, "can_push": False},
                      timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def git_over_ssh(tmp_path: Path, key: Path, known_hosts: str, *args: str
                 ) -> subprocess.CompletedProcess:
    hosts = tmp_path / "known_hosts"
    hosts.write_text(known_hosts + "\n")
    ssh = (f"ssh -F /dev/null -o StrictHostKeyChecking=yes -o UserKnownHostsFile={hosts} "
           f"-o IdentitiesOnly=yes -o IdentityFile={key} -o BatchMode=yes")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_SSH_COMMAND": ssh}
    return subprocess.run(["git", *args], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)


def ssh_url(gl, project: str) -> str:
    token = gl.issue_token("alice", ["read_api"])["access_token"]
    r = requests.get(f"{gl.url}/api/v4/projects/{project.replace('/', '%2F')}",
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return r.json()["ssh_url_to_repo"]


def test_deploy_key_clones_its_project_and_nothing_else(demo_project, tmp_path):
    gl = demo_project
    gl.add_project("demo/other", files={"secret.txt": "not for that key\n"})
    key, _, public = new_key(tmp_path, "deploy")
    add_deploy_key(gl, "demo/hello", public)
    url = ssh_url(gl, "demo/hello")
    assert url.startswith("ssh://git@127.0.0.1:") and url.endswith("/demo/hello.git")

    ok = git_over_ssh(tmp_path, key, gl.known_hosts, "clone", url, "hello")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "hello" / "hello.ipynb").exists()

    other = git_over_ssh(tmp_path, key, gl.known_hosts, "clone",
                         url.replace("demo/hello", "demo/other"))
    assert other.returncode != 0
    assert "could not be found or you don't have permission" in other.stderr

    (tmp_path / "hello" / "new.txt").write_text("x")
    git = ["-C", "hello", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    git_over_ssh(tmp_path, key, gl.known_hosts, *git, "add", "new.txt")
    git_over_ssh(tmp_path, key, gl.known_hosts, *git, "commit", "-qm", "try")
    push = git_over_ssh(tmp_path, key, gl.known_hosts, "-C", "hello", "push", "origin", "HEAD")
    assert push.returncode != 0
    assert "does not have write access" in push.stderr


def test_unknown_key_and_unknown_host_key_are_refused(demo_project, tmp_path):
    gl = demo_project
    stranger, _, _ = new_key(tmp_path, "stranger")
    url = ssh_url(gl, "demo/hello")
    denied = git_over_ssh(tmp_path, stranger, gl.known_hosts, "ls-remote", url)
    assert denied.returncode != 0 and "Permission denied (publickey)" in denied.stderr

    key, _, public = new_key(tmp_path, "deploy")
    add_deploy_key(gl, "demo/hello", public)
    port = url.split(":")[2].split("/")[0]
    forged = f"[127.0.0.1]:{port} " + new_key(tmp_path, "imposter")[2].rsplit(" ", 1)[0]
    spoofed = git_over_ssh(tmp_path, key, forged, "ls-remote", url)
    assert spoofed.returncode != 0
    assert "Host key verification failed" in spoofed.stderr


def test_an_expired_deploy_key_cannot_fetch(demo_project, tmp_path):
    """As GitLab's access check: a deploy key past its expires_at is refused over SSH,
    with the reason (Booklab's keys expire after 7 days, docs/security.md)."""
    gl = demo_project
    key, _, public = new_key(tmp_path, "deploy")
    key_id = add_deploy_key(gl, "demo/hello", public)
    url = ssh_url(gl, "demo/hello")
    assert git_over_ssh(tmp_path, key, gl.known_hosts, "ls-remote", url).returncode == 0
    gl.store.deploy_keys[key_id].expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
    expired = git_over_ssh(tmp_path, key, gl.known_hosts, "ls-remote", url)
    assert expired.returncode != 0 and "Your SSH key has expired." in expired.stderr


class KeyWatch:
    """Watches a runner's work dir from a thread while a job runs: which key files
    (``deploy_key``, ``known_hosts``) and job dirs exist, and the key's text."""

    NAMES = ("deploy_key", "known_hosts")

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self.key_texts: set[str] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def key_files(self) -> list[Path]:
        return [p for p in self.work_dir.rglob("*") if p.name in self.NAMES]

    def _run(self) -> None:
        while not self.done.is_set():
            for key in self.work_dir.glob("booklab-job-*/home/deploy_key"):
                try:
                    self.key_texts.add(key.read_text())
                except OSError:  # deleted between glob and read
                    pass
            time.sleep(0.005)  # an ssh fetch takes far longer than this

    def __enter__(self) -> KeyWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


@pytest.mark.slow
async def test_runner_clones_with_the_jobs_deploy_key(
        launcher, rt_runners, rt_docker, demo_project, tmp_path):
    gl = demo_project
    _, private, public = new_key(tmp_path, "job-key")
    add_deploy_key(gl, "demo/hello", public)
    launcher.conf.ssh_known_hosts = gl.known_hosts
    runner = rt_runners.start("ssh")
    sha = gl.commit("demo/hello", "main", {
        "ssh.ipynb": "{}", "Dockerfile": RT_DOCKERFILE + slow_build_step("ssh-build", 15)})
    with KeyWatch(runner.work_dir) as watch:
        job_id = await launcher.launch("demo/hello", sha, clone={"method": "ssh",
                                                                 "private_key": private})
        job = await launcher.wait_state(job_id, ("building", "failed"))
        assert job["state"] == "building", await launcher.log_text(job_id)
        # the key was on disk, in this runner's work dir, while git fetched with it ...
        assert watch.key_texts == {private.strip() + "\n"}
        # ... and is gone once the fetch is over, while the checkout is still there
        deadline = time.monotonic() + 300
        while "ssh-build" not in await launcher.log_text(job_id):  # the slow step runs
            assert time.monotonic() < deadline, await launcher.log_text(job_id)
            await asyncio.sleep(0.2)
        assert list(runner.work_dir.glob("booklab-job-*/repo/ssh.ipynb"))
        assert watch.key_files() == []
    job = await launcher.wait_state(job_id, ("running", "failed"))
    log = await launcher.log_text(job_id)
    assert job["state"] == "running", log
    assert "Cloning over SSH with a read-only deploy key" in log
    assert "ssh.ipynb" in launcher.contents(job["url"])
    assert "PRIVATE KEY" not in log and "PRIVATE KEY" not in runner.output()
    assert watch.key_files() == [] and not list(runner.work_dir.glob("booklab-job-*"))
    await launcher.stop(job_id)


@pytest.mark.slow
async def test_ssh_clone_fails_with_a_reason_when_the_host_key_is_unknown(
        launcher, rt_runners, rt_docker, demo_project, tmp_path):
    gl = demo_project
    _, private, public = new_key(tmp_path, "job-key")
    add_deploy_key(gl, "demo/hello", public)
    port = gl.store.ssh_port
    launcher.conf.ssh_known_hosts = (f"[127.0.0.1]:{port} "
                                     + new_key(tmp_path, "imposter")[2].rsplit(" ", 1)[0])
    rt_runners.start("ssh-bad")
    job_id = await launcher.launch("demo/hello", gl.commit("demo/hello", "main", {"a": "1"}),
                                   clone={"method": "ssh", "private_key": private})
    job = await launcher.wait_state(job_id, ("running", "failed"))
    assert job["state"] == "failed"
    assert "git fetch of ssh://git@127.0.0.1" in job["error"]
    assert "Host key verification failed" in await launcher.log_text(job_id)
