"""Services whose port the tests choose start on it, or on fresh ports when another
process took it between the pick and the start (tests/services.py: free_ports,
wait_listening). Each test takes a port itself — a listening socket of this test
process, i.e. of another process than the service — and starts the service on it."""

from __future__ import annotations

import shutil
import socket
import tempfile

import pytest
import redis as syncredis
import requests

from tests.conftest_mockhub import start_chp
from tests.conftest_stack import Hub
from tests.gitlab_double import GitLabDouble
from tests.gitlab_double.ssh_server import SshServer
from tests.services import PortTaken, RedisServer, free_port, wait_listening


def listening_on(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_wait_listening_tells_our_listener_from_another_process(tmp_path):
    """A connection would be answered by whoever listens: the socket's owner is what
    counts."""
    port = free_port()
    with listening_on(port):
        server = RedisServer(tmp_path)
        server.port = port
        server.cmd[server.cmd.index("--port") + 1] = str(port)
        server.started = True  # a restart keeps its port: the taken port is an error
        with pytest.raises(PortTaken, match=f"port {port}"):
            server.start()
        assert server.proc.poll() is not None  # it was stopped


def test_redis_starts_on_a_fresh_port_when_its_port_was_taken(tmp_path):
    server = RedisServer(tmp_path)
    taken = server.port
    with listening_on(taken):
        server.start()
    try:
        assert server.port != taken
        client = syncredis.Redis.from_url(server.url)
        assert client.info("server")["process_id"] == server.proc.pid
        wait_listening(server.proc, [server.port], lambda: "")  # ours, and only ours
    finally:
        server.stop()


def test_a_hub_starts_on_fresh_ports_when_one_was_taken(demo_gitlab, redis_server,
                                                         runner_token, tmp_path):
    """JupyterHub and its proxy bind their ports themselves: the hub starts again on
    fresh ones, and the OAuth application's redirect URI follows (a login works)."""
    workdir = tmp_path / "hub"
    workdir.mkdir()
    hub = Hub(workdir, demo_gitlab, redis_server.url, runner_token)
    taken = hub.port  # the public port, which the hub's Traefik binds
    with listening_on(taken):
        hub.start()
    try:
        assert taken not in hub.own_ports()
        assert hub.url == f"http://127.0.0.1:{hub.port}"
        hub.login("alice", "alice-pw")  # GitLab redirects back to the hub's new port
        assert hub.api("GET", "/users/alice").json()["name"] == "alice"
    finally:
        hub.stop()


def test_the_inproc_proxy_starts_on_fresh_ports_when_one_was_taken(tmp_path):
    chp = shutil.which("configurable-http-proxy")
    assert chp, "configurable-http-proxy is not installed: scripts/setup-system.sh"
    taken, other = free_port(), free_port()
    with listening_on(taken):
        proc, proxy = start_chp(chp, tmp_path / "chp.log", ports=(taken, other))
    try:
        assert taken not in (proxy.port, proxy.api_port)
        routes = requests.get(f"http://127.0.0.1:{proxy.api_port}/api/routes", timeout=10,
                              headers={"Authorization": f"token {proxy.token}"})
        assert routes.status_code == 200, routes.text
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_doubles_sshd_starts_on_a_fresh_port_when_its_port_was_taken():
    data = tempfile.mkdtemp(prefix="booklab-ports-gitlab-")
    try:
        gitlab = GitLabDouble(data)
        gitlab.data_dir.chmod(0o755)
        gitlab.start()
        ssh = SshServer(gitlab.store, gitlab.url)
        taken = ssh.port
        with listening_on(taken):
            ssh.start()
        try:
            assert ssh.port != taken and gitlab.store.ssh_port == ssh.port
            assert ssh.known_hosts_line.startswith(f"[127.0.0.1]:{ssh.port} ssh-ed25519 ")
            with socket.create_connection(("127.0.0.1", ssh.port), timeout=10) as conn:
                assert conn.recv(64).startswith(b"SSH-2.0-OpenSSH")
        finally:
            ssh.stop()
            gitlab.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)
