"""Prestart (runner/warm.py, ``runners.prestart``) through a real hub, runner and
Docker: a relaunch binds a container the runner started from the project's last
image while it fetched the commit; a commit that needs another image starts cold,
and the container started on the wrong guess is removed (no warm servers here);
``prestart: false`` starts every launch cold."""

from __future__ import annotations

import json
import time

import pytest
from docker.errors import NotFound

from tests.conftest_hub import wait_until
from tests.conftest_stack import notebook
from tests.test_warm import api, job_log, launch, stop, warm_containers

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PRESTARTED = "started while fetching"


def state_time(hub, job_id: str, state: str) -> float:
    (ts,) = [float(f["ts"]) for _, f in hub.redis().xrange(hub.keys.log(job_id))
             if f.get("kind") == "state" and f.get("state") == state]
    return ts


def created_at(container) -> float:
    """Docker's ``Created`` (RFC 3339, nanoseconds) as a Unix time."""
    stamp = container.attrs["Created"].rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    return time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) - time.timezone + float(
        f"0.{fraction or 0}")


def test_a_relaunch_binds_the_container_started_while_it_fetched(
        make_hub, hb_runner, hb_gitlab, docker_client):
    hub = make_hub({"runners": {"warm_servers": 0}})  # prestart is on by default
    runner = hb_runner(hub)
    hub.login("alice", "alice-pw")

    first = launch(hub, "alice", "a")  # nothing launched before: no guess
    assert PRESTARTED not in job_log(hub, first["id"])
    stop(hub, "alice", "a")

    second = launch(hub, "alice", "b")
    log = job_log(hub, second["id"])
    assert f"Binding warm notebook container {second['container'][:12]} ({PRESTARTED}" in log
    assert second["image"] == first["image"] and second["container"] != first["container"]
    container = docker_client.containers.get(second["container"])
    # created after the claim and before the fetch was over
    assert (state_time(hub, second["id"], "claimed") - 1 < created_at(container)
            < state_time(hub, second["id"], "building")), container.attrs["Created"]
    assert container.name == f"booklab-{second['id']}"
    assert "JUPYTERHUB_API_TOKEN" not in json.dumps(container.attrs)
    token = hub.user_token("alice")
    r = api(hub, "alice", "b", "contents", token)
    assert r.status_code == 200, r.text
    assert "hello.ipynb" in {item["name"] for item in r.json()["content"]}
    stop(hub, "alice", "b")
    with pytest.raises(NotFound):
        docker_client.containers.get(second["container"])

    # a commit whose image is another (the Dockerfile copies the whole tree): the
    # container started on the last image is not used and, with no warm servers, removed
    hb_gitlab.commit("demo/hello", "main", {"new.ipynb": notebook("# new")})
    third = launch(hub, "alice", "c")
    assert third["image"] != first["image"]
    assert PRESTARTED not in job_log(hub, third["id"])
    names = {i["name"] for i in api(hub, "alice", "c", "contents", token).json()["content"]}
    assert "new.ipynb" in names
    wait_until(lambda: not warm_containers(docker_client, runner), 60,
               "the container started on the wrong image removed")
    assert "prestarted for job " + third["id"] in runner.output()
    stop(hub, "alice", "c")


def test_prestart_false_starts_every_launch_cold(make_hub, hb_runner, docker_client):
    hub = make_hub({"runners": {"warm_servers": 0, "prestart": False}})
    runner = hb_runner(hub)
    hub.login("alice", "alice-pw")
    for server in ("a", "b"):
        job = launch(hub, "alice", server)
        assert "Binding warm" not in job_log(hub, job["id"])
        stop(hub, "alice", server)
    assert "prestarted" not in runner.output()
