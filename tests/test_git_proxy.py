"""The hub's read-only git proxy: a Developer's launch never hands a runner the user's
GitLab token (which can write); the runner's one-time grant fetches that job's project
and nothing else, cannot push, and is dead once the fetch is over."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis.asyncio as aioredis
import requests

from booklab_spawner.jobs import JobStore
from booklab_spawner.keys import Keys
from tests.conftest_hub import (
    gitlab_token_of,
    job_secrets,
    jobs_of,
    start_server,
    wait_ready,
    wait_until,
)
from tests.conftest_stack import DEMO_DOCKERFILE

FAKE_RUNNER = "proxy-test-runner"


def _basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


async def _as_runner(redis_url: str, prefix: str, job_id: str, *states: str) -> None:
    """Move a job as a runner would (the test plays the runner)."""
    redis = aioredis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    await redis.set(keys.heartbeat(FAKE_RUNNER), "1", ex=120)  # alive for the hub's checks
    await redis.lrem(keys.queue, 0, job_id)
    for state in states:
        await JobStore(redis, keys).transition(job_id, state, state, runner=FAKE_RUNNER)
    await redis.aclose()


def _git(tmp_path, job_id: str, secret: str, *args: str) -> subprocess.CompletedProcess:
    auth = base64.b64encode(f"{job_id}:{secret}".encode()).decode()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_COUNT": "1",
           "GIT_CONFIG_KEY_0": "http.extraHeader",
           "GIT_CONFIG_VALUE_0": f"Authorization: Basic {auth}"}
    return subprocess.run(["git", *args], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)


def test_grant_fetches_one_project_once_and_never_pushes(make_hub, hb_gitlab, redis_server,
                                                         runner_token, tmp_path):
    gl = hb_gitlab
    gl.add_project("demo/other", files={"Dockerfile": DEMO_DOCKERFILE, "other.txt": "B\n"})
    gl.add_member("demo/other", "alice", 30)
    hub = make_hub()
    hub.login("alice", "alice-pw")  # alice is a Developer of demo/hello
    token = hub.user_token("alice")
    assert start_server(hub, "alice", "one", token).status_code in (201, 202)
    assert start_server(hub, "alice", "two", token, project="demo/other").status_code \
        in (201, 202)
    jobs = wait_until(lambda: len(jobs_of(hub, "alice")) == 2
                      and jobs_of(hub, "alice"), 30, "two jobs")
    job_a, job_b = (next(j for j in jobs if j["server_name"] == n) for n in ("one", "two"))
    assert job_a["clone_method"] == job_b["clone_method"] == "proxy"
    blob = job_secrets(hub, job_a["id"], runner_token)
    secret = blob["clone"]["secret"]
    assert gitlab_token_of(gl, "alice") not in json.dumps(blob)
    conf = hub.redis().hgetall(hub.keys.conf)
    hub_url = json.loads(conf["hub_url"])
    assert hub_url == f"http://127.0.0.1:{hub.hub_port}/hub/"
    url_a = f"{hub_url}booklab/git/{job_a['id']}"
    url_b = f"{hub_url}booklab/git/{job_b['id']}"

    # queued, not yet claimed by a runner: nothing to fetch yet
    refs = f"{url_a}/info/refs?service=git-upload-pack"
    assert requests.get(refs, headers=_basic(job_a["id"], secret), timeout=30).status_code == 403

    asyncio.run(_as_runner(redis_server.url, hub.key_prefix, job_a["id"], "claimed"))
    asyncio.run(_as_runner(redis_server.url, hub.key_prefix, job_b["id"], "claimed"))
    ok = requests.get(refs, headers=_basic(job_a["id"], secret), timeout=30)
    assert ok.status_code == 200 and b"git-upload-pack" in ok.content[:100]
    # no grant, a wrong one, or job A's grant for job B (another project): refused
    assert requests.get(refs, timeout=30).status_code == 403
    assert requests.get(refs, headers=_basic(job_a["id"], "x" * 43), timeout=30).status_code \
        == 403
    for auth in (_basic(job_b["id"], secret), _basic(job_a["id"], secret)):
        r = requests.get(f"{url_b}/info/refs?service=git-upload-pack", headers=auth,
                         timeout=30)
        assert r.status_code == 403, r.text[:200]
    # pushes are refused by the proxy itself, whatever the user's role
    receive = requests.get(f"{url_a}/info/refs?service=git-receive-pack",
                           headers=_basic(job_a["id"], secret), timeout=30)
    assert receive.status_code == 403
    assert requests.post(f"{url_a}/git-receive-pack", headers=_basic(job_a["id"], secret),
                         data=b"0000", timeout=30).status_code == 403

    clone = _git(tmp_path, job_a["id"], secret, "clone", url_a, "a")
    assert clone.returncode == 0, clone.stderr
    assert (tmp_path / "a" / "hello.ipynb").exists()
    (tmp_path / "a" / "new.txt").write_text("x")
    git = ["-C", "a", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    _git(tmp_path, job_a["id"], secret, *git, "add", "new.txt")
    _git(tmp_path, job_a["id"], secret, *git, "commit", "-qm", "try")
    push = _git(tmp_path, job_a["id"], secret, "-C", "a", "push", "origin", "HEAD:main")
    assert push.returncode != 0 and "403" in push.stderr, push.stderr

    # the fetch is over: the grant is deleted and refused from then on
    asyncio.run(_as_runner(redis_server.url, hub.key_prefix, job_a["id"], "fetching",
                           "building"))
    assert requests.get(refs, headers=_basic(job_a["id"], secret), timeout=30).status_code \
        == 403
    wait_until(lambda: not hub.redis().exists(hub.keys.git_grant(job_a['id'])),
               30, "grant deleted by the hub")
    again = _git(tmp_path, job_a["id"], secret, "clone", url_a, "again")
    assert again.returncode != 0


@pytest.mark.docker
@pytest.mark.slow
def test_developer_launch_end_to_end_runner_never_sees_the_users_token(
        make_hub, hb_runner, hb_gitlab, runner_token):
    hub = make_hub()
    runner = hb_runner(hub)
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    r = start_server(hub, "alice", "proxied", token)
    assert r.status_code in (201, 202), r.text
    wait_ready(hub, "alice", "proxied")
    (job,) = jobs_of(hub, "alice", "proxied")
    assert job["clone_method"] == "proxy" and job["deploy_key_id"] == ""
    files = requests.get(hub.proxied("/user/alice/proxied/api/contents"), timeout=30,
                         headers={"Authorization": f"token {token}"})
    assert {"README.md", "hello.ipynb"} <= {i["name"] for i in files.json()["content"]}

    gl_token = gitlab_token_of(hb_gitlab, "alice")
    job_log = _job_log(hub, job["id"])
    assert "Fetching through the hub's read-only git proxy" in job_log
    assert gl_token not in job_log and gl_token not in runner.output()
    with open(f"/proc/{runner.proc.pid}/environ", "rb") as f:
        assert gl_token.encode() not in f.read()
    # after the fetch the runner's encrypted secrets hold no clone credential any more
    secrets_ = job_secrets(hub, job["id"], runner_token)
    assert "clone" not in secrets_ and gl_token not in json.dumps(secrets_)
    assert not hub.redis().exists(hub.keys.git_grant(job['id']))
    hub.api("DELETE", "/users/alice/servers/proxied")


def _job_log(hub, job_id: str) -> str:
    entries = hub.redis().xrange(hub.keys.log(job_id))
    return "\n".join(fields.get("message", "") for _, fields in entries)


@pytest.mark.docker
@pytest.mark.slow
def test_a_job_handed_back_after_its_fetch_gets_a_renewed_grant(
        make_hub, hb_runner, hb_gitlab, runner_token):
    """The first runner fetched (its grant is gone) and shuts down mid-build; the hub
    renews the grant and the next runner fetches and starts the notebook."""
    marker = f"handback-build-{secrets.token_hex(4)}"  # no build cache from earlier runs
    hb_gitlab.commit("demo/hello", "main", {
        "Dockerfile": DEMO_DOCKERFILE + f"RUN echo {marker}\nRUN sleep 15\n"})
    hub = make_hub()
    first = hb_runner(hub)
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    with ThreadPoolExecutor(1) as pool:  # the POST waits up to slow_spawn_timeout (10 s)
        request = pool.submit(start_server, hub, "alice", "again", token)
        (job,) = wait_until(lambda: jobs_of(hub, "alice", "again"), 30, "job")
        wait_until(lambda: marker in _job_log(hub, job["id"]), 300,
                   "the build started")
        assert not hub.redis().exists(hub.keys.git_grant(job['id']))
        first.stop()  # SIGTERM: the job goes back to the queue
        hb_runner(hub)
        assert request.result().status_code in (201, 202)
    wait_ready(hub, "alice", "again")
    log = _job_log(hub, job["id"])
    assert "The hub renewed the clone credential for another fetch" in log
    assert log.count("Fetching through the hub's read-only git proxy") == 2
    hub.api("DELETE", "/users/alice/servers/again")
