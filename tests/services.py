"""Start the real services the tests need: redis-server, and checks for dockerd.

A missing service fails the run (pytest.fail), never skips: CI must execute
every test. ``scripts/test.sh`` installs and starts what is missing.
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from booklab_spawner import acl
from booklab_spawner.keys import Keys

NOTEBOOK_IMAGE = "booklab-test/notebook:latest"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free at the moment, held open together while they
    are picked (one at a time, the kernel may hand out the same port twice). Free
    now is not free later: another process may bind one before our service does, so
    whoever starts a service on them checks with ``wait_listening`` and, on
    ``PortTaken``, starts again on fresh ports."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class PortTaken(RuntimeError):
    """Another process holds a port we picked for a service: pick fresh ports."""


def address_in_use(output: str) -> bool:
    """Whether a process's output says it could not bind (redis-server, sshd, Python,
    node's EADDRINUSE)."""
    text = output.lower()
    return "address already in use" in text or "eaddrinuse" in text


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on ``port`` (any local address), from /proc."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found


def _family(pid: int) -> set[int]:
    """``pid`` and its descendants (a hub's proxy is its child)."""
    parents: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    family, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in family}
        grew = not more <= family
        family |= more
    return family


def _holds(pids: set[int], inodes: set[str]) -> bool:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return True
            except OSError:
                continue
    return False


def wait_listening(proc: subprocess.Popen, ports: list[int], output: Callable[[], str],
                   timeout: float = 60) -> None:
    """Wait until ``proc`` (or a child of it) listens on every one of ``ports``.

    A connection alone would be fooled by another process on the port; the socket's
    owner, read from /proc, is not. Raises ``PortTaken`` when another process holds a
    port, or when ``proc`` exits saying the address is in use."""
    deadline = time.monotonic() + timeout
    waiting = set(ports)
    while waiting and time.monotonic() < deadline:
        family = None
        for port in sorted(waiting):
            inodes = _listening_inodes(port)
            if not inodes:
                continue
            family = family or _family(proc.pid)
            if not _holds(family, inodes):
                # e.g. JupyterHub would take a foreign listener on its proxy API port
                # for a proxy already running: never wait on it
                raise PortTaken(f"port {port} is held by another process")
            waiting.discard(port)
        if not waiting:
            return
        if proc.poll() is not None:
            text = output()
            if address_in_use(text):
                raise PortTaken(f"a port of {sorted(waiting)} was taken: {text[-500:]}")
            raise RuntimeError(f"the process exited ({proc.returncode}):\n{text[-4000:]}")
        time.sleep(0.05)
    if waiting:
        raise TimeoutError(f"nothing of ours listens on 127.0.0.1:{sorted(waiting)} after "
                           f"{timeout} s:\n{output()[-4000:]}")


ATTEMPTS = 5  # starts on fresh ports before a stolen port fails the test


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
    """A real redis-server on a free loopback port, in its own directory; ``host``: a
    local address other than loopback that other network namespaces reach (a test's
    bridge, tests/netns.py), then with a ``password`` as any Redis on a network."""

    def __init__(self, workdir: Path, appendonly: bool = False, password: str = "",
                 host: str = "127.0.0.1"):
        binary = shutil.which("redis-server")
        if not binary:
            pytest.fail("redis-server is not installed: run scripts/test.sh (it installs it)")
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.cmd = [binary, "--port", str(self.port), "--bind", host, "--save", "",
                    "--appendonly", "yes" if appendonly else "no", "--dir", str(workdir),
                    "--notify-keyspace-events", "KEA"]
        self.password = password
        if password:  # in a config file on stdin: not on the command line, which ps shows
            self.cmd.append("-")
        self.proc: subprocess.Popen | None = None
        self.started = False

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        """redis-server cannot be handed a bound socket: a first start whose port another
        process took starts again on a fresh one; a restart keeps its port (clients
        hold the URL)."""
        for attempt in range(ATTEMPTS):
            try:
                self._start_once()
            except PortTaken:
                self.stop()
                if self.started or attempt == ATTEMPTS - 1:
                    raise
                self.port = free_port()
                self.cmd[self.cmd.index("--port") + 1] = str(self.port)
                continue
            self.started = True
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_once(self) -> None:
        log_path = self.workdir / "redis.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.PIPE if self.password else None)
        if self.password:
            self.proc.stdin.write(f"requirepass {self.password}\n".encode())
            self.proc.stdin.close()
        wait_listening(self.proc, [self.port],
                       lambda: log_path.read_bytes()[offset:].decode(errors="replace"))

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


def free_subnet(client, under: str) -> ipaddress.IPv4Network:
    """A random /24 under ``under`` (e.g. "10.231.0.0/16") that no Docker network
    and no host route uses: a test's own network never clashes with another's."""
    used = [ipaddress.ip_network(c["Subnet"]) for n in client.networks.list()
            for c in (n.attrs.get("IPAM") or {}).get("Config") or [] if c.get("Subnet")]
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    used += [ipaddress.ip_network(line.split()[0]) for line in routes.splitlines()
             if "/" in line.split()[0]]
    candidates = list(ipaddress.ip_network(under).subnets(new_prefix=24))
    for net in random.sample(candidates, len(candidates)):
        if not any(net.overlaps(u) for u in used):
            return net
    raise AssertionError(f"no free /24 under {under}")


_RUNNER_USERS: dict[tuple[str, str], str] = {}


def runner_user(key_prefix: str) -> str:
    """The Redis user of the runners of one key prefix (one per prefix: its rules
    name the prefix's keys), as an operator makes it with ``booklab-redis-acl``."""
    return acl.check_user("runner-" + (key_prefix.rstrip(":") or "noprefix"))


def runner_redis_url(admin_url: str, key_prefix: str) -> str:
    """``admin_url`` (the hub's Redis URL) with the credentials of the prefix's runner
    user instead, made on first use with the product's own rules (``acl.rules``):
    every runner of the suite logs in as deployed, with no access to Traefik's keys."""
    key = (admin_url, key_prefix)
    if key not in _RUNNER_USERS:
        user, password = runner_user(key_prefix), secrets.token_hex(16)
        with redis.Redis.from_url(admin_url) as admin:
            admin.execute_command("ACL", "SETUSER",
                                  *acl.setuser_args(user, password, Keys(key_prefix)))
        url = urlsplit(admin_url)
        netloc = f"{user}:{password}@{url.hostname}:{url.port or 6379}"
        _RUNNER_USERS[key] = urlunsplit(url._replace(netloc=netloc))
    return _RUNNER_USERS[key]
