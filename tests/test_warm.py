"""Warm notebook servers (runner/warm.py) through a real hub, runner and Docker: a
relaunch of a recently launched image is served by a container started before it
was queued; before binding that container holds no token, no user's name and no
user's files; each is used once, never by two users; unused ones expire; a runner
restart removes the unbound ones and adopts the bound ones, which stop like cold
ones."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests
from docker.errors import NotFound

from booklab_spawner.runner.containers import LABEL_RUNNER, LABEL_WARM
from tests.conftest_hub import DEVELOPER, jobs_of, start_server, wait_gone, wait_ready, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]

WARM_READY = b"booklab-warm: ready"


@pytest.fixture
def carol(hb_gitlab):
    """A second Developer of demo/hello (carol, its Maintainer, would clone over SSH)."""
    hb_gitlab.add_user("carol", password="carol-pw", name="Carol")
    hb_gitlab.add_member("demo/hello", "carol", DEVELOPER)
    return "carol"


def warm_hub(make_hub, ttl: int):
    return make_hub({"runners": {"warm_servers": 1, "warm_ttl": ttl}})


def api(hub, user: str, server: str, path: str, token: str, method: str = "GET",
        **kw) -> requests.Response:
    return requests.request(method, hub.proxied(f"/user/{user}/{server}/api/{path}"),
                            headers={"Authorization": f"token {token}"}, timeout=30, **kw)


def warm_containers(docker_client, runner) -> list:
    """The runner's containers still unbound (named booklab-warm-…)."""
    found = docker_client.containers.list(all=True, filters={
        "label": [f"{LABEL_RUNNER}={runner.runner_id}", LABEL_WARM]})
    return [c for c in found if c.name.startswith("booklab-warm-")]


def wait_warm(docker_client, runner, exclude: set[str] = frozenset(), timeout: float = 120):
    """The one warm container of the runner, once its server's imports are done."""
    def ready():
        found = [c for c in warm_containers(docker_client, runner) if c.id not in exclude]
        return found[0] if found and WARM_READY in found[0].logs() else None
    return wait_until(ready, timeout, "a warm container whose imports are done")


def launch(hub, user: str, server: str) -> dict:
    assert start_server(hub, user, server, hub.user_token(user)).status_code in (201, 202)
    wait_ready(hub, user, server)
    (job,) = [j for j in jobs_of(hub, user, server) if j["state"] == "running"]
    return job


def stop(hub, user: str, server: str) -> None:
    assert hub.api("DELETE", f"/users/{user}/servers/{server}").status_code in (202, 204)
    wait_gone(hub, user, server)


def job_log(hub, job_id: str) -> str:
    return "\n".join(f.get("message", "") for _, f in hub.redis().xrange(hub.keys.log(job_id)))


def processes_env(container) -> str:
    """Every process's environment in the container (all run as the notebook user)."""
    out = container.exec_run(["sh", "-c", "cat /proc/[0-9]*/environ | tr '\\0' '\\n'"],
                             user="1000")
    text = out.output.decode(errors="replace")
    assert "Permission denied" not in text and "PATH=" in text, text
    return text


def docker_env(container) -> list[str]:
    return container.client.images.get(container.attrs["Image"]).attrs["Config"]["Env"]


def assert_holds_nothing_of_anyone(container, users: list[str], files: list[str]) -> None:
    attrs = json.dumps(container.attrs)
    env = processes_env(container)
    image_env = docker_env(container)
    assert not [e for e in container.attrs["Config"]["Env"] if e not in image_env]
    assert "JUPYTERHUB_" not in env, env
    for user in users:
        assert f'"{user}"' not in attrs
    image_labels = container.client.images.get(container.attrs["Image"]).labels
    assert set(container.labels) - set(image_labels) == {LABEL_RUNNER, LABEL_WARM}
    listing = container.exec_run(["ls", "-a", "/home/jovyan"]).output.decode()
    for name in files:
        assert name not in listing, listing


def test_a_relaunch_binds_a_warm_container_used_once_and_never_shared(
        make_hub, hb_runner, docker_client, carol):
    hub = warm_hub(make_hub, ttl=30)
    runner = hb_runner(hub)
    for user, pw in (("alice", "alice-pw"), ("carol", "carol-pw")):
        hub.login(user, pw)
    admin = hub.login("admin", "admin-pw")

    # alice's cold launch; her server writes a file
    first = launch(hub, "alice", "a")
    assert "Binding warm" not in job_log(hub, first["id"])
    token_a = hub.user_token("alice")
    r = api(hub, "alice", "a", "contents/alice-only.txt", token_a, "PUT",
            json={"type": "file", "format": "text", "content": "alice's"})
    assert r.status_code in (200, 201), r.text
    stop(hub, "alice", "a")
    with pytest.raises(NotFound):
        docker_client.containers.get(first["container"])

    # a warm container for the image, holding nothing of anyone yet
    warm = wait_warm(docker_client, runner)
    assert warm.id != first["container"]
    assert_holds_nothing_of_anyone(warm, ["alice", "carol"], ["alice-only.txt"])
    assert warm.attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert warm.attrs["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    created = warm.attrs["Created"]
    # the admin page shows it, per runner and image
    page = admin.get(f"{hub.url}/hub/booklab/admin", timeout=30)
    row = re.search(rf'<tr data-runner="{runner.runner_id}">.*?</tr>', page.text, re.S)
    cell = re.search(r'class="small booklab-warm">(.*?)</td>', row.group(0), re.S).group(1)
    image = re.escape(first["image"])
    assert re.search(rf'booklab-warm-count">1</span> &times; <code>{image}<', cell), cell

    # carol's launch is served by it: her token works, she sees the commit's files
    # and nothing of alice's; the token is in no docker inspect field
    second = launch(hub, "carol", "b")
    assert second["container"] == warm.id
    assert f"Binding warm notebook container {warm.id[:12]}" in job_log(hub, second["id"])
    assert created < time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(second["created"])))
    token_c = hub.user_token("carol")
    r = api(hub, "carol", "b", "contents", token_c)
    assert r.status_code == 200, r.text
    names = {item["name"] for item in r.json()["content"]}
    assert "README.md" in names and "alice-only.txt" not in names
    assert api(hub, "carol", "b", "contents", token_a).status_code in (403, 302, 401)
    bound = docker_client.containers.get(warm.id)
    assert bound.name == f"booklab-{second['id']}"
    assert "JUPYTERHUB_API_TOKEN" not in json.dumps(bound.attrs)
    r = api(hub, "carol", "b", "contents/carol-only.txt", token_c, "PUT",
            json={"type": "file", "format": "text", "content": "carol's"})
    assert r.status_code in (200, 201), r.text
    stop(hub, "carol", "b")
    with pytest.raises(NotFound):
        docker_client.containers.get(warm.id)

    # the next launch gets another, fresh container
    again = wait_warm(docker_client, runner, exclude={warm.id})
    assert_holds_nothing_of_anyone(again, ["alice", "carol"], ["alice-only.txt",
                                                                "carol-only.txt"])
    third = launch(hub, "alice", "c")
    assert third["container"] == again.id != warm.id
    names = {i["name"] for i in api(hub, "alice", "c", "contents", token_a).json()["content"]}
    assert "carol-only.txt" not in names and "alice-only.txt" not in names
    stop(hub, "alice", "c")

    # unused, the last one is removed once its image's last launch is warm_ttl old
    last = wait_warm(docker_client, runner, exclude={warm.id, again.id})
    wait_until(lambda: not warm_containers(docker_client, runner), 90, "warm container expired")
    with pytest.raises(NotFound):
        docker_client.containers.get(last.id)
    assert "unused for its time to live" in runner.output()


def test_runner_restart_adopts_a_bound_warm_container_and_removes_unbound_ones(
        make_hub, hb_runner, docker_client):
    hub = warm_hub(make_hub, ttl=600)
    runner = hb_runner(hub, "--slots=2")
    hub.login("alice", "alice-pw")
    launch(hub, "alice", "a")
    stop(hub, "alice", "a")
    warm = wait_warm(docker_client, runner)
    job = launch(hub, "alice", "b")
    assert job["container"] == warm.id
    spare = wait_warm(docker_client, runner, exclude={warm.id})  # the free second slot

    runner.kill()  # mid-run: a bound warm container and an unbound one left behind
    restarted = hb_runner(hub, "--slots=2", runner_id=runner.runner_id)
    wait_until(lambda: f"adopting container {warm.id[:12]}" in restarted.output(), 60,
               "the bound warm container adopted")
    wait_until(lambda: _gone(docker_client, spare.id), 60, "the unbound one removed")
    assert api(hub, "alice", "b", "contents", hub.user_token("alice")).status_code == 200
    stop(hub, "alice", "b")
    assert _gone(docker_client, warm.id)
    assert [j["state"] for j in jobs_of(hub, "alice", "b")] == ["stopped"]


def _gone(docker_client, container_id: str) -> bool:
    try:
        docker_client.containers.get(container_id)
    except NotFound:
        return True
    return False
