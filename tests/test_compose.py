"""`docker compose up` on the hub node, for real: the shipped docker-compose.yml (Redis
with a password and AOF, Traefik reading its routes from Redis, the hub, and the
`runner` profile's runner), with tests/compose/docker-compose.test.yml building every
image from the local debootstrap base (nothing can be pulled here); beside it a worker
node from docker-compose.runner.yml, given only a worker's .env values.

A person logs in through the GitLab double, launches demo/hello from a launch link,
reaches JupyterLab through Traefik, and stops the server; then the stack goes down
with its volumes (also when the test fails, after printing `docker compose logs`).

Addresses: the test's compose network has a fixed subnet, and the host's address on
it (the gateway) is where the GitLab double listens (for the browser and for the hub's
container), where Traefik and the hub API are published, and where the runner
publishes notebooks; notebooks reach the hub API there (hub.connect_url).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import docker.errors
import pytest
import redis as syncredis
import requests
import yaml
from playwright.sync_api import expect

from booklab_spawner.keys import Keys
from booklab_spawner.runner.network import NotebookNetwork
from tests.conftest_pages import browser_login, save_screenshot
from tests.conftest_stack import seed_demo
from tests.gitlab_double import GitLabDouble
from tests.services import (
    RUNNER_LABEL,
    artifacts_dir,
    free_ports,
    free_subnet,
    remove_images,
    remove_runner_containers,
    require_docker,
    require_image,
)
from tests.test_pages_browser import stop_from_picker

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "tests" / "compose"
HUB_NODE = [REPO / "docker-compose.yml", HERE / "docker-compose.test.yml"]
WORKER_NODE = [REPO / "docker-compose.runner.yml", HERE / "docker-compose.runner.test.yml"]
BUILD_SH = HERE / "build.sh"
LAB_TIMEOUT = 300_000  # ms: a first build of the demo image on a shared machine
KEY_PREFIX = "bl-compose:"  # not the default: .env must carry it to all three


def compose_images() -> dict[str, str]:
    """tests/compose/build.sh: the images' names and contexts (fetched on the host)."""
    out = subprocess.run(["bash", str(BUILD_SH)], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable}, timeout=1200)
    if out.returncode != 0:
        pytest.fail(f"tests/compose/build.sh failed:\n{out.stderr[-4000:]}")
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


class Compose:
    """`docker compose` on a shipped file + its test override: one project, its own
    .env; the calling environment is left out so that nothing of it leaks in."""

    def __init__(self, workdir: Path, env: dict[str, str], files: list[Path],
                 *options: str):
        self.project = f"blc{secrets.token_hex(4)}"
        self.files, self.options = files, options
        workdir.mkdir(exist_ok=True)
        self.env_file = workdir / ".env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.env_file.chmod(0o600)

    def __call__(self, *args: str, check: bool = True, timeout: float = 900
                 ) -> subprocess.CompletedProcess:
        cmd = ["docker", "compose", "--env-file", str(self.env_file), "-p", self.project,
               *[a for f in self.files for a in ("-f", str(f))], *self.options, *args]
        env = {k: os.environ[k] for k in ("PATH", "HOME", "DOCKER_HOST") if k in os.environ}
        t0 = time.monotonic()
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=timeout)
        print(f"docker compose {' '.join(args)}: {time.monotonic() - t0:.1f} s")
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({out.returncode}):\n"
                                 f"{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
        return out


@pytest.fixture
def stack(tmp_path, request):
    client = require_docker()
    require_image(client)  # the demo repository's FROM
    images = compose_images()

    net = free_subnet(client, "10.232.0.0/16")
    gateway = str(net.network_address + 1)
    http_port, hub_api_port, redis_port, gitlab_port = free_ports(4)
    tag = secrets.token_hex(3)
    runner_id, nb_network = f"compose-{tag}", f"blc{tag}"
    image_prefix = f"booklab-compose-nb-{tag}/"
    public = f"http://{gateway}:{http_port}"
    gitlab_url = f"http://{gateway}:{gitlab_port}"
    client_id, client_secret = "booklab-compose", secrets.token_hex(16)
    redis_password, runner_password = secrets.token_hex(32), secrets.token_hex(32)

    config = {
        # connect_url, the Redis URL and key prefix, secrets: from .env via the compose file
        "hub": {"ip": "0.0.0.0", "port": 8000, "hub_ip": "0.0.0.0", "hub_port": 8081,
                "admin_users": ["admin"], "data_dir": "/srv/booklab"},
        "gitlab": {"allow_all": True, "callback_url": f"{public}/hub/oauth_callback"},
        "proxy": {"kind": "traefik", "start": False, "api_url": "http://traefik:8099"},
        "runners": {"network": "bridge", "image_prefix": image_prefix, "start_timeout": 600},
    }
    config_file = tmp_path / "config.yml"
    config_file.write_text(yaml.safe_dump(config))
    config_file.chmod(0o644)  # the hub reads it as uid 1000
    secret = {k: secrets.token_hex(32) for k in ("JUPYTERHUB_CRYPT_KEY", "BOOKLAB_RUNNER_TOKEN",
                                                "BOOKLAB_TRAEFIK_API_PASSWORD")}
    compose = Compose(tmp_path / "hub-node", {
        # the secrets, as .env.example says to make them (openssl rand -hex 32)
        **secret, "BOOKLAB_REDIS_PASSWORD": redis_password,
        "BOOKLAB_REDIS_RUNNER_PASSWORD": runner_password,
        "GITLAB_URL": gitlab_url, "GITLAB_CLIENT_ID": client_id,
        "GITLAB_CLIENT_SECRET": client_secret,
        "BOOKLAB_HOST_ADDRESS": gateway, "BOOKLAB_CONFIG_FILE": str(config_file),
        "BOOKLAB_HTTP_BIND": gateway, "BOOKLAB_HTTP_PORT": str(http_port),
        "BOOKLAB_HUB_API_PORT": str(hub_api_port),
        "BOOKLAB_REDIS_BIND": gateway, "BOOKLAB_REDIS_PORT": str(redis_port),
        "BOOKLAB_REDIS_KEY_PREFIX": KEY_PREFIX,
        "BOOKLAB_RUNNER_ID": runner_id, "BOOKLAB_NOTEBOOK_NETWORK": nb_network,
        "BOOKLAB_TRAEFIK_LOG_LEVEL": "INFO",
        "BOOKLAB_TEST_SUBNET": str(net), "BOOKLAB_TEST_GATEWAY": gateway,
        **images,
    }, HUB_NODE, "--profile", "runner")
    # a worker node on the same machine: only what a worker's .env needs
    worker_id, worker_network = f"compose-w{tag}", f"blw{tag}"
    worker = Compose(tmp_path / "worker-node", {
        "BOOKLAB_HUB_NODE": gateway, "BOOKLAB_HOST_ADDRESS": gateway,
        # a worker holds only the runners' Redis password, not the hub's
        "BOOKLAB_RUNNER_ID": worker_id, "BOOKLAB_REDIS_RUNNER_PASSWORD": runner_password,
        "BOOKLAB_RUNNER_TOKEN": secret["BOOKLAB_RUNNER_TOKEN"], "GITLAB_URL": gitlab_url,
        "BOOKLAB_HUB_API_PORT": str(hub_api_port), "BOOKLAB_REDIS_PORT": str(redis_port),
        "BOOKLAB_REDIS_KEY_PREFIX": KEY_PREFIX, "BOOKLAB_NOTEBOOK_NETWORK": worker_network,
        "BOOKLAB_TEST_BOOKLAB_IMAGE": images["BOOKLAB_TEST_BOOKLAB_IMAGE"],
    }, WORKER_NODE)
    gitlab = GitLabDouble(tmp_path / "gitlab")
    try:
        # only what is missing is built (by content hash; docker's layer cache does the rest)
        todo = [svc for svc, key in (("redis", "REDIS"), ("traefik", "TRAEFIK"),
                                     ("hub", "BOOKLAB"))
                if images[f"BOOKLAB_TEST_{key}_BUILD"] == "1"]
        if todo:
            compose("build", *todo, timeout=1800)
        # the network first: the GitLab double listens on its gateway
        compose("up", "--no-start", "--no-build", "--pull", "never")
        gitlab.start(port=gitlab_port, host=gateway)
        seed_demo(gitlab)
        gitlab.add_oauth_app(client_id, client_secret,
                             redirect_uri=f"{public}/hub/oauth_callback",
                             scopes=["api", "read_api", "read_user", "read_repository"])
        # --wait: until Redis, Traefik and the hub are healthy and the runner runs
        compose("up", "-d", "--no-build", "--pull", "never", "--wait",
                "--wait-timeout", "300")
        worker("up", "-d", "--no-build", "--pull", "never", "--wait", "--wait-timeout", "120")
        yield SimpleNamespace(url=public, gateway=gateway, compose=compose, gitlab=gitlab,
                              client=client, networks={runner_id: nb_network,
                                                       worker_id: worker_network},
                              redis_url=f"redis://:{redis_password}@{gateway}:{redis_port}/0",
                              runner_redis_url=f"redis://booklab-runner:{runner_password}"
                                               f"@{gateway}:{redis_port}/0")
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            for name, c in (("hub-node", compose), ("worker-node", worker)):
                logs = c("logs", "--no-color", "--timestamps", check=False).stdout
                (artifacts_dir() / f"compose-{name}.log").write_text(logs)
                print(f"\n===== docker compose logs, {name} ({c.project}) =====\n"
                      f"{logs[-15000:]}")
        # the worker first: its runner deregisters in the hub node's Redis
        downs = [c("down", "-v", "--remove-orphans", "--timeout", "90", check=False)
                 for c in (worker, compose)]
        gitlab.stop()
        remove_runner_containers(client, {runner_id, worker_id})
        for name in (nb_network, worker_network):
            NotebookNetwork(client, name).remove()
        remove_images(client, image_prefix)
        assert [d.returncode for d in downs] == [0, 0], [d.stderr for d in downs]


def wait_for_runners(bus, keys: Keys, ids: set[str], timeout: float = 120) -> None:
    """Until every runner in ``ids`` is registered with a live heartbeat (a runner
    container counts as up for compose once it runs, before it has connected)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bus.smembers(keys.runners) >= ids and all(
                bus.exists(keys.heartbeat(r)) for r in ids):
            return
        time.sleep(0.2)
    raise AssertionError(f"runners {sorted(ids)} not all registered: "
                         f"{sorted(bus.smembers(keys.runners))}")


def test_compose_up_login_launch_lab_through_traefik_stop_down(stack, browser_page):
    # the hub's pages come through Traefik, on the public entrypoint
    r = requests.get(stack.url + "/hub/api", timeout=30)
    assert r.status_code == 200 and "version" in r.json(), r.text[:300]

    # both runners register in the hub node's Redis, the worker's over the network
    bus = syncredis.Redis.from_url(stack.redis_url, decode_responses=True)
    wait_for_runners(bus, Keys(KEY_PREFIX), set(stack.networks))

    page = browser_page
    browser_login(page, stack, "alice", "alice-pw")  # OAuth through the GitLab double
    page.goto(stack.url + "/hub/booklab/v2/gl/demo%2Fhello/main?labpath=hello.ipynb")
    page.click("#confirm-launch")
    page.wait_for_url(re.compile(re.escape(stack.url)
                                 + r"/user/alice/hello-main-[0-9a-f]{6}/lab/tree/hello\.ipynb"),
                      timeout=LAB_TIMEOUT)
    notebook = page.locator(".jp-NotebookPanel .jp-RenderedMarkdown h1")
    expect(notebook).to_contain_text("Hello from Booklab", timeout=LAB_TIMEOUT)
    save_screenshot(page, "compose-lab.png")
    server = re.search(r"/user/alice/([^/]+)/", page.url).group(1)

    # the notebook runs on one of the runners, on that runner's network, published on
    # the host address that Traefik reaches; the route to it lives in Redis
    (container,) = [c for r in stack.networks for c in stack.client.containers.list(
        filters={"label": f"{RUNNER_LABEL}={r}"})]
    runner = container.labels[RUNNER_LABEL]
    assert list(container.attrs["NetworkSettings"]["Networks"]) == [stack.networks[runner]]
    (binding,) = [b for bs in container.attrs["NetworkSettings"]["Ports"].values() if bs
                  for b in bs]
    assert binding["HostIp"] == stack.gateway
    targets = {bus.get(k) for k in bus.scan_iter(
        f"{KEY_PREFIX}traefik/http/services/*/loadBalancer/servers/0/url")}
    assert f"http://{stack.gateway}:{binding['HostPort']}" in targets, targets

    # the runners' Redis user (all a worker node holds) cannot write a route; the hub
    # checked that at start
    as_runner = syncredis.Redis.from_url(stack.runner_redis_url)
    with pytest.raises(syncredis.exceptions.NoPermissionError):
        as_runner.set(f"{KEY_PREFIX}traefik/http/routers/evil/rule", "PathPrefix(`/`)")
    hub_log = stack.compose("logs", "--no-color", "hub").stdout
    assert "Redis user 'booklab-runner' of the runners cannot touch the proxy's" in hub_log

    stop_from_picker(page, stack, server)
    with pytest.raises(docker.errors.NotFound):
        container.reload()
