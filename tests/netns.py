"""Other machines on this one: runner hosts as network namespaces, each with its own dockerd.

A test that needs a hub and runners on *different hosts* gets a :class:`Lan`: a
Linux bridge in the root network namespace (the hub host's side, e.g.
``10.213.57.1/24``) and, per runner host, a network namespace joined to the
bridge by a veth pair (``eth0`` inside, its own address, default route via the
bridge address) with a ``dockerd`` of its own inside it. What runs in a host's
namespace reaches the root namespace only through the bridge address; the root
namespace's ``127.0.0.1`` is another machine's loopback there.

Names, for run id ``R`` (6 hex digits, fresh per :class:`Lan`) and host ``k``::

    bridge   bkhR                  10.213.N.1/24 in the root namespace
    netns    bkhR-k                eth0 10.213.N.(10+k)/24, lo up
    veth     bkhRvk                the root end of host k's eth0, on the bridge
    state    /run/booklab-hosts/R/ owner (pid, start time), net, hk/{docker.sock,...}
    data     /var/lib/booklab-hosts/R/hk   host k's dockerd --data-root

The dockerd is started with ``nsenter --net=/var/run/netns/bkhR-k dockerd ...``:
``ip netns exec`` would also remount ``/sys``, and dockerd then fails with
"Devices cgroup isn't mounted". Each dockerd keeps its own iptables rules, its
own ``docker0`` (``--bip 172.31.k.1/24``), its own containerd (under its exec
root), images and containers; the runner's notebook network and firewall
chains live in that namespace too and go with it.

Nothing here survives the run: :meth:`Lan.close` stops the dockerds (which stop
their containers), kills what is left in each namespace, deletes namespaces,
veths and the bridge, unmounts and removes the state and data directories.
A run that crashed leaves its state directory behind with a dead owner (pid and
start time, so a reused pid does not count):
:func:`clean_stale` (called by every new :class:`Lan`) tears such runs down
by the same steps, and also removes ``bkh*`` namespaces and links of runs that
have no state directory at all. Runs whose owner lives are left alone, so two
test sessions on one machine do not disturb each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.services import artifacts_dir

PREFIX = "bkh"  # every interface, namespace and directory this module makes
STATE = Path("/run/booklab-hosts")
DATA = Path("/var/lib/booklab-hosts")
NET_BASE = "10.213"  # /24s under 10.213.0.0/16; one is picked per run


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): "
                           f"{result.stderr.strip()[:500]}")
    return result


def require_tools() -> None:
    missing = [t for t in ("ip", "nsenter", "dockerd", "docker", "iptables")
               if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: run scripts/setup-system.sh")
    if os.geteuid() != 0:
        raise RuntimeError("runner hosts need root (network namespaces, a bridge, dockerd)")


class Host:
    """One runner host: a network namespace with its own address and dockerd."""

    def __init__(self, lan: Lan, index: int):
        self.lan, self.index = lan, index
        self.name = f"{lan.name}-{index}"  # the namespace
        self.veth = f"{lan.name}v{index}"
        self.address = str(lan.network.network_address + 10 + index)
        self.dir = lan.state / f"h{index}"
        self.data_root = DATA / lan.run_id / f"h{index}"
        self.socket = self.dir / "docker.sock"
        self.docker_host = f"unix://{self.socket}"
        self.pidfile = self.dir / "dockerd.pid"
        self.log_path = artifacts_dir() / f"dockerd-{self.name}.log"
        self.dockerd: subprocess.Popen | None = None
        self._client = None

    @property
    def nsenter(self) -> tuple[str, ...]:
        """The prefix that runs a command on this host (its network namespace only)."""
        return ("nsenter", f"--net=/var/run/netns/{self.name}", "--")

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(*self.nsenter, *cmd, check=check)

    def create(self) -> None:
        sh("ip", "netns", "add", self.name)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
           "netns", self.name)
        sh("ip", "link", "set", self.veth, "master", self.lan.name, "up")
        ns = ("ip", "-n", self.name)
        sh(*ns, "link", "set", "lo", "up")
        sh(*ns, "addr", "add", f"{self.address}/{self.lan.network.prefixlen}", "dev", "eth0")
        sh(*ns, "link", "set", "eth0", "up")
        sh(*ns, "route", "add", "default", "via", self.lan.address)

    def start_dockerd(self) -> None:
        self.dir.mkdir(parents=True)
        self.data_root.mkdir(parents=True)
        config = self.dir / "daemon.json"
        config.write_text("{}\n")  # not the machine's /etc/docker/daemon.json
        log = open(self.log_path, "wb")
        self.dockerd = subprocess.Popen(
            [*self.nsenter, "dockerd", f"--config-file={config}",
             f"--data-root={self.data_root}", f"--exec-root={self.dir / 'exec'}",
             f"--pidfile={self.pidfile}", f"-H={self.docker_host}",
             f"--bip=172.31.{self.index}.1/24"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def wait_dockerd(self, timeout: float = 120) -> None:
        import docker

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.dockerd is not None and self.dockerd.poll() is not None:
                raise RuntimeError(f"dockerd of {self.name} exited:\n{self.log()[-3000:]}")
            if self.socket.exists():
                try:
                    client = docker.DockerClient(base_url=self.docker_host, version="auto")
                    client.ping()
                    self._client = client
                    return
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"dockerd of {self.name} did not answer:\n{self.log()[-3000:]}")

    @property
    def client(self):
        """docker-py on this host's dockerd."""
        assert self._client is not None, "wait_dockerd() first"
        return self._client

    def load_image(self, tar: Path) -> None:
        sh("docker", "-H", self.docker_host, "load", "-i", str(tar))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Lan:
    """A bridge with ``hosts`` runner hosts on it; :meth:`close` removes all of it."""

    def __init__(self, hosts: int = 2):
        require_tools()
        clean_stale()
        self.run_id = secrets.token_hex(3)
        self.name = f"{PREFIX}{self.run_id}"
        self.state = STATE / self.run_id
        with _lock():
            self.network = _free_network()
            self.state.mkdir(parents=True)
            (self.state / "owner").write_text(_process_id(os.getpid()))
            (self.state / "net").write_text(str(self.network))
        self.address = str(self.network.network_address + 1)  # the hub host's address
        self.hosts = [Host(self, k) for k in range(1, hosts + 1)]
        try:
            sh("ip", "link", "add", self.name, "type", "bridge")
            sh("ip", "addr", "add", f"{self.address}/{self.network.prefixlen}",
               "dev", self.name)
            sh("ip", "link", "set", self.name, "up")
            for host in self.hosts:
                host.create()
                host.start_dockerd()
            for host in self.hosts:
                host.wait_dockerd()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for host in self.hosts:
            if host._client is not None:
                host._client.close()
        teardown(self.run_id)


# -- creation helpers ------------------------------------------------------------------
@contextlib.contextmanager
def _lock():
    """Serialise picking a network among test sessions on this machine."""
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _free_network() -> ipaddress.IPv4Network:
    """A /24 under 10.213.0.0/16 that no route of the root namespace and no live run uses."""
    routes = sh("ip", "-4", "route", "show", "table", "all").stdout.split("\n")
    used = [ipaddress.ip_network(r.split()[0], strict=False) for r in routes
            if r and "/" in r.split()[0]]
    used += [ipaddress.ip_network((d / "net").read_text().strip())
             for d in STATE.iterdir() if (d / "net").exists()]
    for third in random.sample(range(1, 255), 254):
        net = ipaddress.ip_network(f"{NET_BASE}.{third}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free /24 under {NET_BASE}.0.0/16")


# -- teardown, also of crashed runs ------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_id(pid: int) -> str:
    """``pid`` and its start time: a pid that the kernel reused is another process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"  # field 22: starttime


def _owner_alive(run_dir: Path) -> bool:
    try:
        owner = (run_dir / "owner").read_text().strip()
        pid = int(owner.split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return _process_id(pid) == owner


def clean_stale() -> None:
    """Tear down every earlier run whose owner process is gone (a crashed session)."""
    if STATE.exists():
        for run_dir in STATE.iterdir():
            if run_dir.is_dir() and not _owner_alive(run_dir):
                teardown(run_dir.name)
    live = {d.name for d in STATE.iterdir() if d.is_dir()} if STATE.exists() else set()
    for ns in sh("ip", "netns", "list").stdout.split("\n"):
        name = ns.split(" ")[0]
        if name.startswith(PREFIX) and name[len(PREFIX):].split("-")[0] not in live:
            _delete_netns(name)
    for line in sh("ip", "-o", "link", "show").stdout.split("\n"):
        parts = line.split(": ")
        if len(parts) > 1:
            name = parts[1].split("@")[0]
            if name.startswith(PREFIX) and name[len(PREFIX):len(PREFIX) + 6] not in live:
                sh("ip", "link", "del", name, check=False)
    if DATA.exists():
        for data in DATA.iterdir():
            if data.name not in live:
                _remove_tree(data)


def teardown(run_id: str) -> None:
    """Remove run ``run_id``: dockerds, what runs in its namespaces, links, directories."""
    run_dir = STATE / run_id
    name = f"{PREFIX}{run_id}"
    for host_dir in sorted(run_dir.glob("h*")) if run_dir.exists() else []:
        _stop_dockerd(host_dir / "dockerd.pid")
        _delete_netns(f"{name}-{host_dir.name[1:]}")
    for ns in sh("ip", "netns", "list").stdout.split("\n"):
        if ns.startswith(f"{name}-"):
            _delete_netns(ns.split(" ")[0])
    sh("ip", "link", "del", name, check=False)  # the bridge (the veths went with their ns)
    _remove_tree(DATA / run_id)
    _remove_tree(run_dir)


def _stop_dockerd(pidfile: Path, timeout: float = 60) -> None:
    """SIGTERM (dockerd then stops its containers and containerd), SIGKILL after."""
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    if not _alive(pid) or "dockerd" not in _cmdline(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _delete_netns(ns: str) -> None:
    """Kill what still runs in ``ns`` (a crashed run's runner, containerd, shims), delete it."""
    pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    for pid in pids:
        deadline = time.monotonic() + 10
        while pid.isdigit() and _alive(int(pid)) and time.monotonic() < deadline:
            _reap(int(pid))
            time.sleep(0.05)
    sh("ip", "netns", "del", ns, check=False)


def _remove_tree(path: Path) -> None:
    """Unmount what a dockerd left mounted below ``path`` (overlays, netns files), remove."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        sh("umount", "-l", mount, check=False)
    # rm, not shutil.rmtree: a data root holds image layers of many small files, which
    # rm removes several times faster
    sh("rm", "-rf", "--one-file-system", str(path), check=False)
