"""Start the real services the tests need: redis-server, and checks for dockerd.

A missing service fails the run (pytest.fail), never skips: CI must execute
every test. ``scripts/test.sh`` installs and starts what is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

NOTEBOOK_IMAGE = "booklab-test/notebook:latest"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports, held open together while they are picked:
    picked one at a time, the kernel may hand out the same port twice (a hub once got
    its proxy API's port for itself and failed to bind)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for_port(port: int, timeout: float = 20, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


class RedisServer:
    """A real redis-server on a free loopback port, in its own directory."""

    def __init__(self, workdir: Path, appendonly: bool = False, password: str = ""):
        binary = shutil.which("redis-server")
        if not binary:
            pytest.fail("redis-server is not installed: run scripts/test.sh (it installs it)")
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "yes" if appendonly else "no", "--dir", str(workdir),
                    "--notify-keyspace-events", "KEA"]
        self.password = password
        if password:  # in a config file on stdin: not on the command line, which ps shows
            self.cmd.append("-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = open(self.workdir / "redis.log", "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.PIPE if self.password else None)
        if self.password:
            self.proc.stdin.write(f"requirepass {self.password}\n".encode())
            self.proc.stdin.close()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def require_docker():
    from docker.errors import DockerException

    import docker

    try:
        client = docker.from_env(version="auto")
        client.ping()
    except DockerException as e:
        pytest.fail(f"Docker is not reachable ({e}): run scripts/test.sh (it starts dockerd)")
    return client


def require_image(client, name: str = NOTEBOOK_IMAGE) -> str:
    from docker.errors import ImageNotFound

    try:
        client.images.get(name)
    except ImageNotFound:
        pytest.fail(f"test image {name} is missing: run tests/images/build.sh "
                    "(scripts/test.sh does)")
    return name


def artifacts_dir() -> Path:
    path = Path(os.environ.get("BOOKLAB_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- Docker clean-up, the one way every fixture does it -------------------------------
RUNNER_LABEL = "org.booklab.runner"  # launch.LABEL_RUNNER, written out: tests state names


def remove_runner_containers(client, runner_ids) -> None:
    """Force-remove the containers labelled for one of ``runner_ids`` (a set, or a
    predicate on the label): only this session's runners, never another session's."""
    import docker.errors

    mine = runner_ids if callable(runner_ids) else set(runner_ids).__contains__
    for c in client.containers.list(all=True, filters={"label": RUNNER_LABEL}):
        if mine(c.labels.get(RUNNER_LABEL, "")):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass  # its runner removed it meanwhile
            except docker.errors.APIError as e:
                if e.status_code != 409:  # 409: a removal already in progress
                    raise


def remove_images(client, prefix: str) -> None:
    """Untag every image whose tag starts with ``prefix``, by tag and not forced: the
    same layers may be tagged (and running) for another suite, which cleans up itself."""
    import docker.errors

    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(prefix):
                try:
                    client.images.remove(tag)
                except docker.errors.APIError as e:
                    print(f"left image {tag}: {e.explanation}")
