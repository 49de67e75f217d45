"""Runners on other hosts, end to end (issue 10, item 2).

The hub runs in the root network namespace; two runner hosts are network
namespaces on a bridge, each with its own dockerd (tests/netns.py). The
runners reach Redis (with a password), the hub's API and its git proxy only
over the bridge; the notebooks run in bridge mode on their host's dockerd,
published on the host's advertised address, and reach the hub API through
``hub.connect_url``. Two launches with one slot per runner land one on each
host; the browser path through the hub's proxy reaches each; a stop removes
the container from its own host and leaves the other host's running.
"""

from __future__ import annotations

import re
import socket

import pytest
import requests
from docker.errors import NotFound

from tests.conftest_hosts import PROXY_TOKEN
from tests.conftest_hub import start_server, wait_gone, wait_ready, wait_until
from tests.test_traefik import routes as redis_routes

pytestmark = [pytest.mark.docker, pytest.mark.slow]

JOB_LABEL = "org.booklab.job"  # containers.LABEL_JOB, written out: tests state names


def containers_of(host, job_id: str) -> list:
    return host.client.containers.list(all=True, filters={"label": f"{JOB_LABEL}={job_id}"})


def route_table(hub) -> dict:
    """The proxy's routes as the hub reads them back from its proxy (CHP or Traefik)."""
    r = requests.get(f"{hub.url}/hub/api/proxy", timeout=30,
                     headers={"Authorization": f"token {PROXY_TOKEN}"})
    assert r.status_code == 200, r.text[:300]
    return r.json()


# connect to argv[1]:argv[2] and say what happened (on a host, or in a notebook)
PROBE = ("import socket, sys\n"
         "try:\n"
         "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
         "except OSError as e:\n"
         "    print(type(e).__name__)\n"
         "else:\n"
         "    print('open')\n")


def probe_from(container, address: str, port: int) -> str:
    _, out = container.exec_run(["python3", "-c", PROBE, address, str(port)])
    return out.decode(errors="replace").strip()


def traefik_routes(hub) -> dict[str, list[str]]:
    """Path prefix -> backend URLs, as Traefik's own API shows what it routes."""
    api, auth = hub.config["proxy"]["api_url"], ("booklab", hub.config["proxy"]["api_password"])
    routers = requests.get(f"{api}/api/http/routers", auth=auth, timeout=10).json()
    services = {s["name"]: s for s in
                requests.get(f"{api}/api/http/services", auth=auth, timeout=10).json()}
    found: dict[str, list[str]] = {}
    for router in routers:
        prefix = re.search(r"PathPrefix\(`([^`]*)`\)", router.get("rule", ""))
        name = router["service"]
        service = services.get(name) or services.get(f"{name}@{router['provider']}") or {}
        servers = (service.get("loadBalancer") or {}).get("servers") or []
        if prefix:
            found[prefix.group(1)] = [server["url"] for server in servers]
    return found


def test_runner_hosts_apart_from_the_hub(lan):
    """What the other tests rely on: a runner host's own address and dockerd, the hub
    host only over the bridge, the hub host's loopback not at all."""
    a, b = lan.hosts
    assert a.client.info()["DockerRootDir"] != b.client.info()["DockerRootDir"]
    # one service of the hub host, on its loopback and on the bridge (a fresh address:
    # nothing else listens on it, so the loopback's free port is free there too)
    with socket.socket() as lan_srv, socket.socket() as lo_srv:
        lo_srv.bind(("127.0.0.1", 0))
        lan_srv.bind((lan.address, lo_srv.getsockname()[1]))
        lan_srv.listen()
        lo_srv.listen()
        port = str(lan_srv.getsockname()[1])
        assert a.run("python3", "-c", PROBE, lan.address, port).stdout.strip() == "open"
        assert a.run("python3", "-c", PROBE, "127.0.0.1", port).stdout.strip() == \
            "ConnectionRefusedError"


def test_launches_land_on_both_hosts_and_stop_cleans_the_right_one(
        lan, make_lan_hub, lan_runners, lan_redis):
    hub = make_lan_hub()
    runners = {proc.runner_id: proc for proc in lan_runners(hub)}
    session = hub.login("alice", "alice-pw")  # the double's OAuth, on the bridge address
    token = hub.user_token("alice")

    for name in ("one", "two"):  # queued together; one slot each: one per host
        resp = start_server(hub, "alice", name, token)
        assert resp.status_code in (201, 202), resp.text
    placed = {}
    for name in ("one", "two"):
        wait_ready(hub, "alice", name)
        job = hub.job_of("alice", name)
        assert job["state"] == "running", job
        placed[name] = (job, runners[job["runner"]].host)
    assert {host.name for _, host in placed.values()} == {h.name for h in lan.hosts}
    # each runner registered the address it advertises (the hub checks URLs against it)
    r = hub.redis()
    for proc in runners.values():
        assert r.hget(hub.keys.runner(proc.runner_id), "host") == proc.host.address

    routes, in_redis, in_traefik = route_table(hub), redis_routes(hub), traefik_routes(hub)
    for name, (job, host) in placed.items():
        other = next(h for h in lan.hosts if h is not host)
        # the container is on that host's dockerd, and not on the other's
        (container,) = containers_of(host, job["id"])
        assert containers_of(other, job["id"]) == []
        assert container.status == "running"
        # published on the runner's advertised address: what the proxy routes to
        ((_, (port,)),) = container.ports.items()
        assert port["HostIp"] == host.address, container.ports
        assert job["url"] == f"http://{host.address}:{port['HostPort']}"
        path = f"/user/alice/{name}/"
        assert routes[path]["target"] == job["url"], routes  # the hub's view
        assert in_redis[path]["target"] == job["url"], in_redis  # the route's record
        assert in_traefik[path] == [job["url"]], in_traefik  # what Traefik serves
        # the notebook reaches the hub API through hub.connect_url (or it never got ready)
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        assert env["JUPYTERHUB_API_URL"] == f"{hub.api_url}/hub/api"
        # the browser path: the hub's proxy -> the notebook on the runner host
        lab = session.get(hub.proxied(f"/user/alice/{name}/lab"), timeout=60)
        assert lab.status_code == 200 and "JupyterLab" in lab.text, (lab.url, lab.text[:300])
        status = session.get(hub.proxied(f"/user/alice/{name}/api/status"), timeout=30)
        assert status.status_code == 200, status.text[:300]

    # the runner's firewall lives in its host's namespace: a notebook reaches the hub
    # API (--notebook-allow) and nothing else of the hosts' network (--notebook-deny):
    # not Redis, not the GitLab double, not the other host's notebook
    for name, (job, host) in placed.items():
        other_job, other_host = next(v for k, v in placed.items() if k != name)
        (container,) = containers_of(host, job["id"])
        other_port = int(other_job["url"].rsplit(":", 1)[1])
        assert probe_from(container, lan.address, hub.hub_port) == "open"
        assert probe_from(container, lan.address, lan_redis.port) == "ConnectionRefusedError"
        gitlab_port = int(hub.gitlab.url.rsplit(":", 1)[1])
        assert probe_from(container, lan.address, gitlab_port) == "ConnectionRefusedError"
        assert probe_from(container, other_host.address, other_port) == \
            "ConnectionRefusedError"
        chains = host.run("iptables", "-S", "BOOKLAB-FWD").stdout.splitlines()
        assert any(lan.address in rule and f"--ctorigdstport {hub.hub_port} -j ACCEPT"
                   in rule for rule in chains), chains

    # stop "one": its container goes from its host; "two" on the other host runs on
    job_one, host_one = placed["one"]
    job_two, host_two = placed["two"]
    (two,) = containers_of(host_two, job_two["id"])
    (one_id,) = (c.id for c in containers_of(host_one, job_one["id"]))
    resp = hub.api("DELETE", "/users/alice/servers/one", token=token)
    assert resp.status_code in (202, 204), resp.text
    wait_gone(hub, "alice", "one")
    assert containers_of(host_one, job_one["id"]) == []
    with pytest.raises(NotFound):
        host_one.client.containers.get(one_id)
    two.reload()
    assert two.status == "running"
    assert session.get(hub.proxied("/user/alice/two/api/status"), timeout=30).status_code == 200

    resp = hub.api("DELETE", "/users/alice/servers/two", token=token)
    assert resp.status_code in (202, 204), resp.text
    wait_gone(hub, "alice", "two")
    assert containers_of(host_two, job_two["id"]) == []
    # started before the hub's first launch, as on a fresh installation: no error
    for proc in runners.values():
        assert " ERROR " not in proc.output(), proc.output()[-3000:]
    assert hub.job_of("alice", "one")["state"] == "stopped"
    assert hub.job_of("alice", "two")["state"] == "stopped"


def test_a_deploy_key_clone_goes_over_the_network_to_gitlabs_sshd(
        lan, make_lan_hub, lan_runners, lan_gitlab):
    """A Maintainer's launch clones with a read-only deploy key from the runner host:
    the double's sshd (on the bridge address) sees the connection come from the
    runner host's own address, and the key is gone once the fetch is over."""
    gl = lan_gitlab
    hub = make_lan_hub({"gitlab": {"clone_method": "deploy_key",
                                   "ssh_known_hosts": gl.known_hosts}})
    runners = {proc.runner_id: proc for proc in lan_runners(hub)}
    hub.login("maria", "maria-pw")
    token = hub.user_token("maria")
    resp = start_server(hub, "maria", "key", token)
    assert resp.status_code in (201, 202), resp.text
    wait_ready(hub, "maria", "key")

    job = hub.job_of("maria", "key")
    host = runners[job["runner"]].host
    assert job["clone_method"] == "ssh"
    assert job["ssh_url"].startswith(f"ssh://git@{lan.address}:")
    (container,) = containers_of(host, job["id"])
    assert container.labels["org.booklab.sha"] == gl.demo_sha
    # sshd logged the runner host's address: the fetch came over the bridge
    sshd_log = gl.ssh_log()
    assert f"Connection from {host.address} port" in sshd_log, sshd_log[-2000:]
    wait_until(lambda: gl.deploy_keys("demo/hello") == [], 60, "deploy key removed")

    assert hub.api("DELETE", "/users/maria/servers/key", token=token).status_code in (202, 204)
    wait_gone(hub, "maria", "key")
    assert containers_of(host, job["id"]) == []
