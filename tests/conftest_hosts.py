"""Fixtures for runners on other hosts (tests/netns.py): the hub in the root network
namespace, runner hosts as namespaces with their own dockerd, and the services the
runners use — Redis (with a password) and the GitLab double — bound on the bridge
address, the only address of the hub host a runner host can reach.

    lan          the bridge and two runner hosts (each: namespace, address, dockerd with
                 the local base image loaded), one per test module
    lan_redis    a redis-server with a password on the bridge address
    lan_gitlab   the GitLab double and its sshd on the bridge address (demo/hello;
                 alice Developer, maria Maintainer)
    make_lan_hub make_lan_hub(overrides) starts a hub: public proxy (Traefik) on
                 127.0.0.1, API on the bridge address (hub.connect_url),
                 runners.network bridge, clone through the hub's git proxy
                 (gitlab.clone_method token) unless overridden
    lan_runners  lan_runners(hub) starts one booklab-runner per host, inside its namespace
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest_hub import add_hub_users
from tests.conftest_stack import Hub, RunnerProcess, _dump_on_failure, seed_demo
from tests.gitlab_double import GitLabDouble
from tests.netns import Lan
from tests.services import NOTEBOOK_IMAGE, RedisServer, remove_runner_containers

HS_IMAGE_PREFIX = "booklab-hs/"
PROXY_TOKEN = secrets.token_hex(16)  # a service allowed to read the hub's route table


@pytest.fixture(scope="session")
def notebook_image_tar(tmp_path_factory, docker_client):
    """``docker save`` of the local base image, once per session, for every host's load."""
    tar = tmp_path_factory.mktemp("images") / "notebook.tar"
    result = subprocess.run(["docker", "save", "-o", str(tar), NOTEBOOK_IMAGE],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"docker save {NOTEBOOK_IMAGE} failed: {result.stderr[:500]}")
    return tar


@pytest.fixture(scope="module")
def lan(notebook_image_tar):
    """Two runner hosts with the base image, shared by a module's tests (as the
    session's dockerd is shared by all): loading the image and removing a host's data
    root cost half a minute each on a busy machine. Each test brings its own hub,
    Redis, GitLab and runners (fresh ids), and its launches clean up after them."""
    try:
        net = Lan(hosts=2)
    except RuntimeError as e:
        pytest.fail(f"cannot build runner hosts: {e}")
    try:
        with ThreadPoolExecutor(len(net.hosts)) as pool:
            list(pool.map(lambda host: host.load_image(notebook_image_tar), net.hosts))
        yield net
    finally:
        net.close()


@pytest.fixture
def lan_redis(lan, tmp_path):
    server = RedisServer(tmp_path / "lan-redis", host=lan.address,
                         password=secrets.token_hex(16)).start()
    yield server
    server.stop()


@pytest.fixture
def lan_gitlab(lan):
    """The GitLab double and its sshd on the bridge address: demo/hello with alice
    (Developer), bob (nothing), maria (Maintainer). Its data directory is outside
    pytest's 0700 tree: sshd runs git as the ``git`` user."""
    data = tempfile.mkdtemp(prefix="booklab-hs-gitlab-")
    os.chmod(data, 0o755)
    gl = GitLabDouble(data)
    gl.start(host=lan.address)
    try:
        gl.known_hosts = gl.start_ssh()  # "[10.213.N.1]:PORT ssh-ed25519 ..."
        yield add_hub_users(seed_demo(gl))
    finally:
        gl.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def make_lan_hub(lan, lan_gitlab, lan_redis, runner_token, tmp_path, request):
    """``make_lan_hub(overrides)`` starts a hub whose API listens on the bridge address
    (``hub.connect_url``) and whose public proxy (Traefik) is on 127.0.0.1; runners in
    bridge mode, cloning through the hub's git proxy unless ``overrides`` say otherwise."""
    hubs: list[Hub] = []

    def make(overrides: dict | None = None) -> Hub:
        base = {
            "hub": {"hub_ip": lan.address},
            "gitlab": {"clone_method": "token"},
            "redis": {"key_prefix": f"hs{secrets.token_hex(3)}:"},
            "runners": {"network": "bridge", "image_prefix": HS_IMAGE_PREFIX},
            # Traefik (the default proxy) with an API password the test knows, to ask
            # Traefik itself where it routes
            "proxy": {"api_password": secrets.token_hex(16)},
        }
        for section, values in (overrides or {}).items():
            base.setdefault(section, {}).update(values)
        hub = Hub(tmp_path / f"hub{len(hubs)}", lan_gitlab, lan_redis.url, runner_token,
                  overrides=base)
        hub.api_url = f"http://{lan.address}:{hub.hub_port}"  # as runners, notebooks see it
        hub.config["hub"]["connect_url"] = hub.api_url
        hub.extra_config = f"""
c.JupyterHub.services.append({{"name": "hosts-test", "api_token": {PROXY_TOKEN!r}}})
c.JupyterHub.load_roles.append({{"name": "hosts-test", "services": ["hosts-test"],
                                 "scopes": ["proxy"]}})
"""
        hubs.append(hub)
        hub.workdir.mkdir()
        return hub.start()

    yield make
    for hub in hubs:
        hub.stop()
        _dump_on_failure(request, hub.process)


@pytest.fixture
def lan_runners(lan, lan_redis, lan_gitlab, runner_token, tmp_path, request):
    """``lan_runners(hub)``: one booklab-runner (1 slot) per runner host, each in its
    host's namespace with that host's dockerd; Redis and the hub only over the bridge.

    Host 1's runner is told the hub's and GitLab's URLs (``--hub-url``,
    ``--gitlab-url``, as docs/deploy.md recommends); host 2's takes both from the
    conf the hub publishes (its ``hub_url`` is ``hub.connect_url``), so both ways
    are walked by every launch that lands there."""
    procs: list[RunnerProcess] = []
    run = secrets.token_hex(3)

    def start(hub: Hub) -> list[RunnerProcess]:
        for host in lan.hosts:
            work = tmp_path / f"runner-{host.index}"
            work.mkdir()
            told = (f"--hub-url={hub.api_url}/hub/", f"--gitlab-url={lan_gitlab.url}")
            proc = RunnerProcess(
                f"hs-{run}-{host.index}", lan_redis.url, runner_token, work,
                "--slots=1", *(told if host.index == 1 else ()),
                # notebooks reach the hub API and nothing else of the hosts' network
                f"--notebook-allow={lan.address}:{hub.hub_port}",
                f"--notebook-deny={lan.network}",
                key_prefix=hub.key_prefix, advertise_host=host.address,
                wrap=host.nsenter, env={"DOCKER_HOST": host.docker_host})
            proc.host = host
            procs.append(proc)
        return procs

    yield start
    for proc in procs:  # their images go with their host's dockerd
        proc.stop()
        _dump_on_failure(request, proc)
    rep = getattr(request.node, "rep_call", None)
    for host in lan.hosts:
        if rep is not None and rep.failed:
            print(f"\n===== dockerd of {host.name} ({host.log_path}) =====")
            print(host.log()[-4000:])
        remove_runner_containers(host.client, {proc.runner_id for proc in procs})
