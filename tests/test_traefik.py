"""Traefik, the deployed proxy, for real: routes through Redis to the runner's
address, HTTPS with a given certificate and the HTTP redirect, a Traefik the hub
did not start (docker compose's shape), and no proxy secret in the hub's log.

Every hub test goes through Traefik (it is the default); these check what only
Traefik's own configuration decides."""

from __future__ import annotations

import os
import secrets
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest_hub import start_server, wait_gone, wait_ready, wait_until
from tests.conftest_stack import BIN, Process, _dump_on_failure
from tests.services import RedisServer, free_port, wait_for_port


def self_signed(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "hub.pem", tmp_path / "hub.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def routes(hub) -> dict[str, dict]:
    """JupyterHub's routes as jupyterhub-traefik-proxy keeps them in Redis."""
    r, prefix = hub.redis(), f"{hub.key_prefix}jupyterhub/routes/"
    found: dict[str, dict] = {}
    for key in r.scan_iter(prefix + "*"):
        router, field = key.removeprefix(prefix).split("/", 1)
        found.setdefault(router, {})[field] = r.get(key)
    return {v["routespec"]: v for v in found.values() if "routespec" in v}


def test_https_end_to_end_with_a_given_certificate(make_hub, hb_runner, tmp_path):
    cert, key = self_signed(tmp_path)
    redirect_port = free_port()
    hub = make_hub({"proxy": {"tls_cert": cert, "tls_key": key,
                              "http_redirect_port": redirect_port}})
    assert hub.url.startswith("https://")
    hb_runner(hub)

    # Traefik presents our certificate, and plain HTTP is sent to HTTPS
    served = ssl.get_server_certificate(("127.0.0.1", hub.port))
    assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    r = requests.get(f"http://127.0.0.1:{redirect_port}/hub/login?next=%2Fhub%2F",
                     allow_redirects=False, timeout=10)
    assert r.status_code == 301, r.status_code  # permanent (Traefik: 308 for a POST)
    assert r.headers["Location"] == f"https://127.0.0.1:{hub.port}/hub/login?next=%2Fhub%2F"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(hub.url + "/hub/api", timeout=10)  # not trusted without our cert

    session = hub.login("alice", "alice-pw")  # OAuth back to the https callback
    token = hub.user_token("alice")
    assert start_server(hub, "alice", "tls", token).status_code in (201, 202)
    wait_ready(hub, "alice", "tls")

    # the route Traefik serves points at the runner's advertised address
    job = hub.job_of("alice", "tls")
    route = routes(hub)["/user/alice/tls/"]
    assert route["target"] == job["url"]
    assert route["target"].startswith("http://127.0.0.1:")  # --advertise-host of the runner
    # a person's path: the lab page, through the server's own OAuth with the hub, on TLS
    lab = session.get(f"{hub.url}/user/alice/tls/lab", timeout=60)
    assert lab.status_code == 200, lab.text[:300]
    assert lab.url == f"{hub.url}/user/alice/tls/lab" and "JupyterLab" in lab.text
    status = requests.get(f"{hub.url}/user/alice/tls/api/status", verify=cert, timeout=30,
                          headers={"Authorization": f"token {token}"})
    assert status.status_code == 200, status.text[:300]
    assert "started" in status.json()

    assert hub.api("DELETE", "/users/alice/servers/tls", token=token).status_code in (202, 204)
    wait_gone(hub, "alice", "tls")
    wait_until(lambda: "/user/alice/tls/" not in routes(hub), 30, "route removed")


def test_the_hub_logs_no_proxy_secret_and_keeps_traefiks_config_private(
        make_hub, tmp_path, request):
    password = secrets.token_hex(16)
    redis = RedisServer(tmp_path / "redis-pw", password=password).start()
    request.addfinalizer(redis.stop)
    hub = make_hub({"redis": {"url": redis.url}})

    # the pages come through Traefik, which read its routes from the protected Redis
    assert requests.get(hub.url + "/hub/login", timeout=10).status_code == 200
    assert redis.proc.poll() is None
    config = Path(hub.config["hub"]["data_dir"]) / "traefik.toml"
    assert password in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    api_hash = hub.redis().get(
        f"{hub.key_prefix}traefik/http/middlewares/auth_api/basicAuth/users/0")
    # user:bcrypt at cost 4: Traefik checks it on each of the hub's API calls
    assert api_hash and api_hash.startswith("booklab:$2b$04$"), api_hash

    hub.stop()
    log = hub.process.output()
    assert "Writing traefik static config" in log  # the line that carried it
    assert password not in log
    assert api_hash.split(":", 1)[1] not in log


def write_traefik_static(path: Path, public: int, api: int, redis_port: int,
                         root_key: str) -> None:
    """A Traefik the operator runs, configured as docs/deploy.md says."""
    path.write_text(yaml.safe_dump({
        "entryPoints": {"http": {"address": f"127.0.0.1:{public}"},
                        "auth_api": {"address": f"127.0.0.1:{api}"}},
        "api": {},
        "providers": {"providersThrottleDuration": "0s",
                      "redis": {"endpoints": [f"127.0.0.1:{redis_port}"],
                                "rootKey": root_key}},
        "log": {"level": "INFO"}}))


def test_a_traefik_the_hub_did_not_start_outlives_hub_restarts(
        make_hub, hb_runner, redis_server, tmp_path, request):
    api_port = free_port()
    api_password = secrets.token_hex(16)
    hub = make_hub({"proxy": {"start": False,
                              "api_url": f"http://127.0.0.1:{api_port}",
                              "api_password": api_password}}, start=False)
    static = tmp_path / "traefik.yml"
    write_traefik_static(static, hub.port, api_port, redis_server.port,
                         f"{hub.key_prefix}traefik")
    traefik = Process("traefik", [str(BIN / "traefik"), f"--configfile={static}"],
                      dict(os.environ), tmp_path)
    request.addfinalizer(lambda: (traefik.stop(), _dump_on_failure(request, traefik)))
    wait_for_port(hub.port)
    hub.start()  # through the Traefik above: the hub wrote its API router and its route
    hb_runner(hub)

    # the API is behind the basic auth the hub configured
    api = f"http://127.0.0.1:{api_port}/api/http/routers"
    assert requests.get(api, timeout=10).status_code == 401
    ok = requests.get(api, auth=("booklab", api_password), timeout=10)
    assert ok.status_code == 200

    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    assert start_server(hub, "alice", "ext", token).status_code in (201, 202)
    wait_ready(hub, "alice", "ext")
    hub.restart()
    assert traefik.proc.poll() is None  # the hub stops only what it started
    r = requests.get(hub.proxied("/user/alice/ext/api/contents"),
                     headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    names = {i["name"] for i in r.json()["content"]}
    assert "hello.ipynb" in names
    assert hub.api("DELETE", "/users/alice/servers/ext", token=token).status_code in (202, 204)
    wait_gone(hub, "alice", "ext")

