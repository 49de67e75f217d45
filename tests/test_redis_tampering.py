"""Redis tampering: a writer of Redis without the runner token (another tool on a
shared Redis, a leaked Redis password) tries to redirect a runner's credentials, move
a credential to a job of its own making, change what a runner fetches, or point the
hub at a notebook URL of its choosing. Real redis-server, real booklab-runner
processes, a real hub; each attack must be refused and visible as such."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading

import pytest
import redis.asyncio as aioredis

from booklab_spawner import runnerconf as confmod
from booklab_spawner.crypto import Signer
from booklab_spawner.jobs import JobStore
from booklab_spawner.keys import Keys
from tests.conftest_hub import spawn_error, start_server, wait_until

pytestmark = [pytest.mark.docker]


class Listener:
    """An attacker's HTTP server on 127.0.0.1: records every request it gets."""

    def __init__(self):
        seen = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self):
                seen.append({"method": self.command, "path": self.path,
                             "headers": dict(self.headers)})
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="x"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _record

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def credentials(self) -> list[str]:
        return [r["headers"].get("Authorization", "") for r in self.requests
                if r["headers"].get("Authorization")]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


async def _ended(launcher, job_id: str) -> dict[str, str]:
    """The job once it failed, or got past the fetch (the attack worked)."""
    return await launcher.wait_state(job_id, ("failed", "building", "running"), timeout=120)


async def test_forged_conf_gitlab_url_gets_no_token(launcher, rt_runners, demo_project,
                                                    listener, redis, keys):
    """conf.gitlab_url and the job's clone_url rewritten to the attacker's server."""
    sha = demo_project.commit("demo/hello", "main", {"a.txt": "1"})
    job_id = await launcher.launch("demo/hello", sha)
    forged = {**launcher.conf.to_hash(), "gitlab_url": json.dumps(listener.url)}
    await redis.delete(keys.conf)
    await redis.hset(keys.conf, mapping=forged)
    await redis.hset(keys.job(job_id), "clone_url", f"{listener.url}/demo/hello.git")
    launcher.publish = _no_republish  # the hub stays silent: only the forgery is there
    rt_runners.start("conf")
    job = await _ended(launcher, job_id)
    assert listener.credentials() == [], "the runner sent a credential to the attacker"
    assert job["state"] == "failed"
    assert "not signed with the runner token" in job["error"], job["error"]


async def _no_republish() -> None:
    return None


async def test_runner_gitlab_url_wins_over_a_signed_conf(launcher, rt_runners, demo_project,
                                                         listener, redis, keys):
    """Even a conf and job signed with the runner token (the hub's host compromised, or
    the token leaked) cannot send a runner's credential anywhere but its --gitlab-url."""
    sha = demo_project.commit("demo/hello", "main", {"b.txt": "1"})
    launcher.conf.gitlab_url = listener.url
    job_id = await launcher.launch("demo/hello", sha,
                                   clone_url=f"{listener.url}/demo/hello.git")
    rt_runners.start("own-gitlab", f"--gitlab-url={demo_project.url}")
    job = await _ended(launcher, job_id)
    assert listener.credentials() == []
    assert job["state"] == "failed"
    assert f"it is not the configured GitLab {demo_project.url}" in job["error"], job["error"]


async def test_transplanted_credential_is_refused(launcher, rt_runners, demo_project, redis,
                                                  keys):
    """Job A's encrypted credential copied into job B (another user's launch of a
    project A's user may read) is refused: it was sealed for A."""
    gl = demo_project
    gl.add_user("mallory", password="mallory-pw")
    gl.add_project("mallory/lab", files={"Dockerfile": "FROM scratch\n"})
    gl.add_member("mallory/lab", "mallory", 40)
    sha_a = gl.commit("demo/hello", "main", {"c.txt": "1"})
    job_a = await launcher.launch("demo/hello", sha_a)
    launcher.user = "mallory"
    token_b = gl.issue_token("mallory", ["read_repository"])["access_token"]
    job_b = await launcher.launch("demo/hello", sha_a, clone={
        "method": "token", "username": "oauth2", "password": token_b},
        clone_url=f"{gl.url}/demo/hello.git")
    blob_a = await redis.get(keys.token(job_a))
    assert blob_a
    await launcher.store.cancel_queued(job_a)  # A is not run; only its secret is used
    await redis.set(keys.token(job_b), blob_a)
    rt_runners.start("transplant")
    job = await _ended(launcher, job_b)
    assert job["state"] == "failed"
    assert "transplanted credential" in job["error"], job["error"]


@pytest.mark.parametrize("field", ["clone_url", "ssh_url", "sha", "project_id", "env"])
async def test_forged_job_field_is_refused(field, launcher, rt_runners, demo_project, redis,
                                           keys):
    gl = demo_project
    gl.add_project("demo/other", files={"Dockerfile": "FROM scratch\n", "x.txt": "other\n"})
    gl.add_member("demo/other", "alice", 40)
    other_sha = gl.commit("demo/other", "main", {"y.txt": "2"})
    sha = gl.commit("demo/hello", "main", {"d.txt": "1"})
    job_id = await launcher.launch("demo/hello", sha)
    forged = {
        "clone_url": f"{gl.url}/demo/other.git",
        "ssh_url": "ssh://git@127.0.0.1:1/demo/other.git",
        "sha": other_sha,
        "project_id": str(gl.store.project_by_path("demo/other").id),
        "env": json.dumps({"BOOKLAB_TEST": "1", "JUPYTERHUB_API_URL": "http://evil.example/"}),
    }[field]
    await redis.hset(keys.job(job_id), field, forged)
    rt_runners.start(f"forge-{field.replace('_', '-')}")
    job = await _ended(launcher, job_id)
    assert job["state"] == "failed", f"the runner acted on a forged {field}"
    assert "not signed with the runner token" in job["error"], job["error"]


async def test_work_dir_sweep_removes_keys_left_by_a_killed_runner(rt_runners, redis, keys,
                                                                   launcher, tmp_path):
    """A runner killed during a fetch leaves the deploy key file in its work dir; the
    next start removes it before taking any job."""
    await launcher.publish()
    work = tmp_path / "work-swept"
    home = work / "booklab-job-leftover" / "home"
    home.mkdir(parents=True)
    (home / "deploy_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nx\n")
    unrelated = work / "operator-notes.txt"
    unrelated.write_text("keep me")
    runner = rt_runners.start("swept")
    assert runner.runner_id
    wait_until(lambda: not (work / "booklab-job-leftover").exists(), 60,
               "leftover job directory removed")
    assert unrelated.read_text() == "keep me"


# -- the hub side: a forged notebook URL ------------------------------------------------
@pytest.mark.parametrize("attack", ["unsigned", "signed-elsewhere", "unregistered-runner"])
def test_hub_refuses_a_forged_notebook_url(attack, make_hub, redis_server, runner_token,
                                           listener):
    hub = make_hub()
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    r = start_server(hub, "alice", "forged", token)
    assert r.status_code in (201, 202), r.text
    job_id = wait_until(lambda: _queued_job(redis_server, hub), 60, "job queued")
    asyncio.run(_fake_runner_reports(redis_server.url, hub.key_prefix, job_id, listener.url,
                                     attack, runner_token))
    message = spawn_error(hub, "alice", "forged", r)
    assert "signature or host check" in message, message
    assert listener.requests == [], "the hub contacted the forged notebook URL"
    server = hub.api("GET", "/users/alice").json()["servers"].get("forged")
    assert not server or not server.get("ready")


def _queued_job(redis_server, hub) -> str | None:
    import redis as syncredis
    r = syncredis.Redis.from_url(redis_server.url, decode_responses=True)
    ids = r.lrange(hub.keys.queue, 0, -1)
    return ids[0] if ids else None


async def _fake_runner_reports(redis_url: str, prefix: str, job_id: str, url: str,
                               attack: str, runner_token: str) -> None:
    """What a Redis writer does: register a 'runner' on 127.0.0.1, take the job and
    report it running at the attacker's URL."""
    redis = aioredis.from_url(redis_url, decode_responses=True)
    keys, fake = Keys(prefix), "fake-runner"
    store = JobStore(redis, keys)
    if attack != "unregistered-runner":
        await redis.sadd(keys.runners, fake)
        host = "10.9.9.9" if attack == "signed-elsewhere" else "127.0.0.1"
        await redis.hset(keys.runner(fake), mapping={"id": fake, "host": host})
    await redis.set(keys.heartbeat(fake), "1", ex=60)
    await redis.lrem(keys.queue, 0, job_id)
    sig = "0" * 64
    if attack != "unsigned":  # a URL a runner signed, but not on its advertised host
        sig = Signer(runner_token).sign_url(job_id, fake, url)
    for state in ("claimed", "fetching", "building", "starting"):
        await store.transition(job_id, state, state, runner=fake)
    await store.transition(job_id, "running", "running", url=url, url_sig=sig,
                           container="x", image="y")
    await redis.aclose()


async def test_conf_read_refuses_unsigned_and_foreign_protocol(redis, keys):
    signer = Signer("t" * 40)
    conf = confmod.RunnerConf(gitlab_url="https://gitlab.example.org")
    await confmod.publish(redis, keys, conf, signer)
    assert (await confmod.read(redis, keys, signer)).gitlab_url == "https://gitlab.example.org"
    with pytest.raises(Exception, match="not signed"):
        await confmod.read(redis, keys, Signer("u" * 40))
    await redis.hset(keys.conf, "protocol", "1")
    with pytest.raises(Exception, match="not signed"):
        await confmod.read(redis, keys, signer)
