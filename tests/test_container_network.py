"""Bridge mode: notebooks are kept off each other, the runner host and Redis.

Issue 8, item 8, against the real dockerd and the host's real iptables: two
notebooks of one runner cannot connect to each other; a notebook cannot
connect to services listening on the runner host (a TCP service and a real
redis-server on the bridge gateway address) nor to the runner's Redis on
another machine; it still reaches the hub API it is allowed to reach, and
the hub still reaches its published port. The rules are the same after a
runner restart and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import secrets
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
import redis as redis_sync
import redis.asyncio as aioredis

from booklab_spawner.runner.network import NotebookNetwork
from tests.conftest_runner import LaunchDouble, rt_network
from tests.services import free_subnet

pytestmark = [pytest.mark.docker, pytest.mark.slow]
REDIS_PASSWORD = "booklab-test-redis"
SUBNETS = "10.231.0.0/16"  # this suite's own Docker networks come from here

# run inside a notebook container: connect to argv[1]:argv[2], say what happened
PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
    "except OSError as e:\n"
    "    print('closed', type(e).__name__)\n"
    "else:\n"
    "    s.sendall(b'PING\\r\\n'); s.settimeout(3)\n"
    "    try: print('open', s.recv(64))\n"
    "    except OSError: print('open')\n"
)


def probe(container, host: str, port: int) -> str:
    code, out = container.exec_run(["python3", "-c", PROBE, host, str(port)])
    return out.decode(errors="replace").strip()


@contextmanager
def tcp_service(address: str, greeting: bytes):
    """A TCP service on the runner host that greets every connection."""
    srv = socket.socket()
    srv.bind((address, 0))
    srv.listen()
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(greeting)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        srv.close()


@contextmanager
def redis_on(address: str, workdir):
    """A real redis-server listening on ``address`` (as a Redis on the runner host would)."""
    with socket.socket() as s:
        s.bind((address, 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server",
                             "--port", str(port), "--bind", address, "--save", "",
                             "--dir", str(workdir), "--requirepass", REDIS_PASSWORD],
                            stdout=subprocess.DEVNULL)
    try:
        client = redis_sync.Redis(host=address, port=port, password=REDIS_PASSWORD,
                                  socket_timeout=5)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis_sync.ConnectionError:
                threading.Event().wait(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def host_connects(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=3):
        return True


def iptables_lines(name: str) -> list[str]:
    """Every rule that mentions the network (Docker's own included)."""
    out = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if name in line or name.upper() in line]


def runner_rules(name: str) -> list[str]:
    """The runner's chains and the jumps to them, sorted."""
    return sorted(line for line in iptables_lines(name) if name.upper() in line)


async def test_notebooks_reach_neither_each_other_nor_the_host_nor_redis(
        launcher, rt_runners, rt_docker, demo_project, tmp_path):
    subnet = str(free_subnet(rt_docker, SUBNETS))
    gateway = str(ipaddress.ip_network(subnet)[1])
    hub_port = random.randrange(20000, 30000)  # stands for the hub API on this host
    launcher.conf.network = "bridge"
    rt_runners.start("iso", "--slots=2", f"--notebook-subnet={subnet}",
                     f"--notebook-allow={gateway}:{hub_port}")
    sha = demo_project.commit("demo/hello", "main", {})
    jobs = [await launcher.launch("demo/hello", sha) for _ in range(2)]
    a, b = [await launcher.wait_state(j, "running") for j in jobs]
    ca, cb = (rt_docker.containers.get(j["container"]) for j in (a, b))
    net = rt_network("iso")
    ip_b = cb.attrs["NetworkSettings"]["Networks"][net]["IPAddress"]
    assert ipaddress.ip_address(ip_b) in ipaddress.ip_network(subnet)

    # the hub (here: the host) still reaches both notebooks on their published ports
    assert "hello.ipynb" in launcher.contents(a["url"])
    assert "hello.ipynb" in launcher.contents(b["url"])

    # notebook A -> notebook B: refused, though B listens (the host reaches it)
    assert host_connects(ip_b, 8888)
    assert probe(ca, ip_b, 8888).startswith("closed"), probe(ca, ip_b, 8888)

    with tcp_service(gateway, b"host service\n") as service_port, \
            redis_on(gateway, tmp_path) as redis_port:
        # the host reaches its own services ...
        assert host_connects(gateway, service_port)
        assert redis_sync.Redis(host=gateway, port=redis_port, password=REDIS_PASSWORD).ping()
        # ... a notebook does not: not a service on the bridge gateway, not Redis
        assert probe(ca, gateway, service_port).startswith("closed")
        assert probe(cb, gateway, redis_port).startswith("closed")
        assert probe(ca, gateway, 22).startswith("closed")
    with tcp_service_on_port(gateway, hub_port, b"hub api\n"):
        # ... but the allowed hub API is reachable
        assert probe(ca, gateway, hub_port) == "open b'hub api\\n'"

    for job_id in jobs:
        assert (await launcher.stop(job_id))["state"] == "stopped"


@contextmanager
def tcp_service_on_port(address: str, port: int, greeting: bytes):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((address, port))
    srv.listen()

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(greeting)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield port
    finally:
        srv.close()


async def test_firewall_is_idempotent_across_restarts_and_removed_without_trace(
        launcher, rt_runners, rt_docker, demo_project):
    launcher.conf.network = "bridge"
    sha = demo_project.commit("demo/hello", "main", {})
    name = rt_network("idem")
    snapshots = []
    for _ in range(2):  # the same runner, started twice
        runner = rt_runners.start("idem", "--notebook-deny=198.51.100.0/24")
        job_id = await launcher.launch("demo/hello", sha)
        await launcher.wait_state(job_id, "running")
        snapshots.append(runner_rules(name))
        assert (await launcher.stop(job_id))["state"] == "stopped"
        runner.stop()
    assert snapshots[0] == snapshots[1]
    rules = snapshots[0]
    assert rules.count(f"-A INPUT -i {name} -j {name.upper()}-IN") == 1
    assert rules.count(f"-A DOCKER-USER -i {name} -j {name.upper()}-FWD") == 1
    assert (f"-A {name.upper()}-FWD -m conntrack --ctorigdst 198.51.100.0/24 "
            "-j REJECT --reject-with icmp-port-unreachable") in rules
    network = rt_docker.networks.get(name)
    assert network.attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"

    # a firewall reload drops the jumps: the next runner start puts them back,
    # before it adopts or starts anything
    subprocess.run(["iptables", "-D", "INPUT", "-i", name, "-j", f"{name.upper()}-IN"],
                   check=True)
    assert runner_rules(name) != rules
    rt_runners.start("idem", "--notebook-deny=198.51.100.0/24")
    deadline = time.monotonic() + 30
    while runner_rules(name) != rules and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert runner_rules(name) == rules

    NotebookNetwork(rt_docker, name).remove()
    assert iptables_lines(name) == []
    assert not rt_docker.networks.list(names=[name])


GREETER = ("import socket, sys\n"
           "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
           "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()\n"
           "while True:\n    c = s.accept()[0]; c.sendall(b'far service\\n'); c.close()\n")


@pytest.fixture
def far_host(rt_docker, tmp_path):
    """Another machine (the hub node): a network namespace behind a veth pair,
    routed from the runner host, running a real redis-server and a TCP service."""
    tag = secrets.token_hex(2)
    ns, veth, peer = f"blt-{tag}", f"blt{tag}h", f"blt{tag}n"
    net = free_subnet(rt_docker, SUBNETS)
    host_ip, far_ip = str(net[1]), str(net[2])
    procs: list[subprocess.Popen] = []

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    def run_there(*cmd: str) -> None:
        procs.append(subprocess.Popen(["nsenter", f"--net=/var/run/netns/{ns}", *cmd],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", peer, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/{net.prefixlen}", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "-n", ns, "addr", "add", f"{far_ip}/{net.prefixlen}", "dev", peer)
        sh("ip", "-n", ns, "link", "set", peer, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", host_ip)
        run_there(shutil.which("redis-server") or "/usr/bin/redis-server", "--port", "6390",
                  "--bind", far_ip, "--requirepass", REDIS_PASSWORD, "--save", "",
                  "--dir", str(tmp_path))
        run_there(shutil.which("python3"), "-c", GREETER, far_ip, "7000")
        client = redis_sync.Redis(host=far_ip, port=6390, password=REDIS_PASSWORD,
                                  socket_timeout=2)
        for _ in range(100):
            try:
                client.ping()
                if host_connects(far_ip, 7000):
                    break
            except (redis_sync.ConnectionError, OSError):
                threading.Event().wait(0.05)
        yield far_ip
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


async def test_notebook_cannot_reach_the_runners_redis_on_another_machine(
        far_host, rt_runners, rt_docker, rt_token, keys, demo_project):
    url = f"redis://:{REDIS_PASSWORD}@{far_host}:6390/0"
    far_redis = aioredis.from_url(url, decode_responses=True)
    try:
        launcher = LaunchDouble(far_redis, keys, rt_token, demo_project)
        launcher.conf.network = "bridge"
        rt_runners.start("far", f"--redis-url={url}")
        job_id = await launcher.launch("demo/hello", demo_project.commit("demo/hello", "main", {}))
        job = await launcher.wait_state(job_id, "running")  # the runner itself uses that Redis
        container = rt_docker.containers.get(job["container"])
        # that machine is reachable from the notebook (the internet, the hub, ...) ...
        assert probe(container, far_host, 7000) == "open b'far service\\n'"
        # ... but not its Redis, the runner's own
        assert probe(container, far_host, 6390).startswith("closed"), probe(container, far_host,
                                                                            6390)
        assert (await launcher.stop(job_id))["state"] == "stopped"
    finally:
        await far_redis.aclose()


async def test_runners_sharing_an_engine_create_its_network_once(rt_docker):
    """Several runners on one host start their first bridge launches together (the load
    benchmark's 10 runners per host did): each ensures the notebook network, one creates
    it, the others take that one. Docker refuses the losers' creates with 409 (same name)
    or 403 (same bridge name), and neither may fail a launch."""
    name = rt_network(f"race-{secrets.token_hex(3)}")
    networks = [NotebookNetwork(rt_docker, name, firewall=False) for _ in range(8)]
    try:
        for _ in range(3):  # the race is lost at random: give it a few chances
            names = await asyncio.gather(*(n.ensure() for n in networks))
            assert names == [name] * len(networks)
            assert len(rt_docker.networks.list(names=[name])) == 1
            NotebookNetwork(rt_docker, name, firewall=False).remove()
    finally:
        NotebookNetwork(rt_docker, name, firewall=False).remove()
