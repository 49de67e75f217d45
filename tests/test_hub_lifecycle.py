"""A server's life seen through the hub (real hub, runner, Docker): progress on the
pending page's event stream in order, reattaching after a hub restart, a container
that dies, and who may see and control whose server."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from docker.errors import NotFound

from tests.conftest_hub import (
    NO_SPAWN_WAIT,
    jobs_of,
    progress_events,
    server_model,
    spawn_error,
    start_server,
    wait_gone,
    wait_ready,
    wait_until,
)
from tests.conftest_stack import DEMO_DOCKERFILE, QUICK_HEARTBEAT, slow_build_step

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FAST_POLL = "c.BooklabSpawner.poll_interval = 2\n"


def contents(hub, user: str, server: str, token: str) -> requests.Response:
    return requests.get(hub.proxied(f"/user/{user}/{server}/api/contents"),
                        headers={"Authorization": f"token {token}"}, timeout=30)


def container_of(docker_client, runner) -> object:
    (c,) = docker_client.containers.list(filters={"label": f"org.booklab.runner="
                                                  f"{runner.runner_id}"})
    return c


def test_progress_events_arrive_in_order_and_replay_from_the_start(make_hub, hb_runner,
                                                                  hb_gitlab):
    # a build that stays in `building` long enough for a second page to connect to it
    hb_gitlab.commit("demo/hello", "main",
                     {"Dockerfile": DEMO_DOCKERFILE + slow_build_step("replay", 15)})
    hub = make_hub()
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    streams: dict[str, list[dict]] = {}

    def read(name: str) -> threading.Thread:
        t = threading.Thread(target=lambda: streams.__setitem__(
            name, progress_events(hub, "alice", "hello", token=token)))
        t.start()
        return t

    # no runner yet: the launch waits in the queue while the pending page connects
    with ThreadPoolExecutor(1) as pool:  # the POST waits up to slow_spawn_timeout (10 s)
        request = pool.submit(start_server, hub, "alice", "hello", token)
        wait_until(lambda: jobs_of(hub, "alice", "hello"), 60, "the queued job")
        first = read("first")
        hb_runner(hub)
        r = request.result()
    assert r.status_code in (201, 202), r.text
    # a second page opened while the job runs sees the log from the start too
    wait_until(lambda: [j for j in jobs_of(hub, "alice", "hello")
                        if j["state"] == "building"], 300, "the build")
    second = read("second")
    first.join(600)
    second.join(600)
    wait_ready(hub, "alice", "hello")

    events = streams["first"]
    assert events[-1]["ready"] is True and events[-1]["progress"] == 100
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress), progress  # never goes backwards
    phases = [e.get("phase") for e in events[1:-1]]  # [0] is JupyterHub's "requested"
    order = ["queued", "claimed", "fetching", "building", "starting", "running"]
    seen = list(dict.fromkeys(phases))
    assert seen == [p for p in order if p in seen], phases
    assert {"queued", "claimed", "fetching", "starting", "running"} <= set(seen), phases
    assert events[1]["message"] == "Queued, waiting for a runner"
    # the second page connected during the build: it got the log from its first line
    assert streams["second"][1]["message"] == "Queued, waiting for a runner"
    assert streams["second"][-1]["ready"] is True
    assert [e["message"] for e in streams["second"]] == [e["message"] for e in events]
    # once ready, the stream only says so
    late = progress_events(hub, "alice", "hello", token=token)
    assert len(late) == 1 and late[0]["ready"] is True
    hub.api("DELETE", "/users/alice/servers/hello")
    wait_gone(hub, "alice", "hello")


def test_hub_restart_mid_run_reattaches_and_the_server_still_stops(
        make_hub, hb_runner, docker_client):
    hub = make_hub()
    runner = hb_runner(hub)
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    assert start_server(hub, "alice", "hello", token).status_code in (201, 202)
    wait_ready(hub, "alice", "hello")
    container = container_of(docker_client, runner)
    assert contents(hub, "alice", "hello", token).status_code == 200

    hub.restart()  # a new hub process and a new proxy: same database, same Redis

    srv = server_model(hub, "alice", "hello")
    assert srv and srv["ready"], srv
    r = wait_until(lambda: (lambda x: x if x.status_code == 200 else None)(
        contents(hub, "alice", "hello", token)), 60, "notebook reachable after restart")
    assert "README.md" in {item["name"] for item in r.json()["content"]}
    assert docker_client.containers.get(container.id).status == "running"
    # the image exists now, yet bob (no access to demo/hello) is still asked GitLab first
    hub.login("bob", "bob-pw")
    r = start_server(hub, "bob", "hello", hub.user_token("bob"))
    assert r.status_code == 400 and "cannot read it" in r.json()["message"]
    assert jobs_of(hub, "bob") == []

    assert hub.api("DELETE", "/users/alice/servers/hello").status_code in (202, 204)
    wait_gone(hub, "alice", "hello")
    with pytest.raises(NotFound):
        docker_client.containers.get(container.id)
    assert jobs_of(hub, "alice", "hello")[0]["state"] == "stopped"


def test_a_container_that_dies_ends_the_server(make_hub, hb_runner, docker_client):
    hub = make_hub(extra_config=FAST_POLL)
    runner = hb_runner(hub)
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    assert start_server(hub, "alice", "hello", token).status_code in (201, 202)
    wait_ready(hub, "alice", "hello")
    container_of(docker_client, runner).kill()
    wait_gone(hub, "alice", "hello", timeout=120)  # poll() saw the job end
    job = jobs_of(hub, "alice", "hello")[0]
    assert job["state"] == "failed" and job["error"], job


def test_users_see_and_control_only_their_own_servers(make_hub):
    hub = make_hub(extra_config=NO_SPAWN_WAIT)  # the launch stays queued: no runner
    hub.login("alice", "alice-pw")
    alice = hub.user_token("alice")
    assert start_server(hub, "alice", "hello", alice).status_code in (201, 202)
    wait_until(lambda: jobs_of(hub, "alice", "hello"), 30, "job")
    hub.login("bob", "bob-pw")
    bob = hub.user_token("bob")
    for method, path in (("GET", "/users/alice"), ("GET", "/users"),
                         ("GET", "/users/alice/servers/hello/progress"),
                         ("POST", "/users/alice/servers/other"),
                         ("DELETE", "/users/alice/servers/hello")):
        r = hub.api(method, path, token=bob, json={} if method == "POST" else None)
        assert r.status_code in (403, 404) or (path == "/users" and [
            u["name"] for u in r.json()] == ["bob"]), (method, path, r.status_code, r.text)
    assert server_model(hub, "alice", "hello")["pending"] == "spawn"  # untouched
    # an admin sees every user's servers and may stop them
    hub.login("admin", "admin-pw")
    admin = hub.user_token("admin")
    users = {u["name"]: u for u in hub.api("GET", "/users", token=admin).json()}
    assert "hello" in users["alice"]["servers"]
    assert hub.api("DELETE", "/users/alice/servers/hello", token=admin).status_code in (202,
                                                                                         204)
    wait_gone(hub, "alice", "hello")


def test_a_runner_that_dies_ends_the_server_with_a_reason(make_hub, hb_runner):
    hub = make_hub(extra_config=FAST_POLL)
    runner = hb_runner(hub, *QUICK_HEARTBEAT)
    hub.login("alice", "alice-pw")
    assert start_server(hub, "alice", "hello", hub.user_token("alice")).status_code in (201,
                                                                                        202)
    wait_ready(hub, "alice", "hello")
    runner.stop(sig=9)  # a crash: no goodbye, the heartbeat just expires (4 s here)
    wait_gone(hub, "alice", "hello", timeout=180)
    job = jobs_of(hub, "alice", "hello")[0]
    assert job["state"] == "failed", job
    assert job["error"] == f"Runner {runner.runner_id} stopped answering (no heartbeat)"


def test_a_runner_that_dies_mid_build_hands_the_launch_to_another(make_hub, hb_runner,
                                                                 hb_gitlab):
    """The launch is not lost with its runner: the job goes back to the queue (the hub
    reaps it as soon as the heartbeat is gone) and another runner finishes it."""
    hb_gitlab.commit("demo/hello", "main",
                     {"Dockerfile": DEMO_DOCKERFILE + slow_build_step("doomed-build", 10)})
    hub = make_hub(extra_config=FAST_POLL)
    doomed = hb_runner(hub, *QUICK_HEARTBEAT)
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    with ThreadPoolExecutor(1) as pool:  # the POST waits up to slow_spawn_timeout (10 s)
        request = pool.submit(start_server, hub, "alice", "hello", token)
        wait_until(lambda: (j := hub.job_of("alice", "hello")) and j["state"] == "building",
                   300, "the build on the first runner")
        doomed.stop(sig=9)  # a crash mid-build: its heartbeat expires in 4 s
        survivor = hb_runner(hub)
        r = request.result()
    assert r.status_code in (201, 202), r.text
    wait_ready(hub, "alice", "hello", timeout=600)
    job = hub.job_of("alice", "hello")
    assert (job["state"], job["runner"]) == ("running", survivor.runner_id), job
    entries = hub.redis().xrange(hub.keys.log(job["id"]))
    requeued = [f["message"] for _, f in entries if f.get("state") == "queued"]
    assert requeued[1:] == [f"Runner {doomed.runner_id} stopped answering (no heartbeat); "
                            "the job went back to the queue"], requeued


def test_container_start_timeout_says_which_phase_and_what_to_check(
        make_hub, hb_runner, docker_client):
    # a notebook command that never listens
    hub = make_hub({"runners": {"container_start_timeout": 8}},
                   extra_config='c.BooklabSpawner.cmd = ["sh", "-c", "sleep 600", "sh"]\n')
    runner = hb_runner(hub)
    hub.login("alice", "alice-pw")
    r = start_server(hub, "alice", "hello", hub.user_token("alice"))
    message = spawn_error(hub, "alice", "hello", r, timeout=600)
    assert message.startswith("The notebook server did not start within the container "
                              "start timeout (8 s)"), message
    job = jobs_of(hub, "alice", "hello")[0]
    assert job["state"] == "failed" and job["error"] == message
    wait_until(lambda: not docker_client.containers.list(
        filters={"label": f"org.booklab.runner={runner.runner_id}"}), 60, "container removed")
