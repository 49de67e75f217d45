"""Launch checks through the hub's REST API: every launch is checked against GitLab with
the user's own token before anything is queued; the clone credential is a read-only
deploy key for Maintainers and a one-time grant for the hub's read-only git proxy for
Developers (never the user's token); hostile input is
refused with 400 and changes nothing."""

from __future__ import annotations

import json

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from booklab_spawner.deploykeys import generate_keypair
from tests.conftest_hub import (
    gitlab_token_of,
    job_secrets,
    jobs_of,
    queue,
    server_model,
    spawn_error,
    start_server,
    wait_gone,
    wait_until,
)


@pytest.fixture
def hub(make_hub):
    return make_hub()


def test_project_the_user_cannot_read_is_refused_and_nothing_queued(hub):
    hub.login("bob", "bob-pw")
    r = start_server(hub, "bob", "hello", hub.user_token("bob"))
    assert r.status_code == 400, r.text
    assert r.json()["message"] == ("Project 'demo/hello' was not found, or your GitLab "
                                   "account cannot read it")
    assert jobs_of(hub, "bob") == [] and queue(hub) == []
    assert server_model(hub, "bob", "hello") is None or not server_model(hub, "bob", "hello")[
        "pending"]


def test_branch_that_does_not_exist_is_refused_and_nothing_queued(hub):
    hub.login("alice", "alice-pw")
    r = start_server(hub, "alice", "nope", hub.user_token("alice"), ref="no-such-branch")
    assert r.status_code == 400, r.text
    assert r.json()["message"] == "Branch, tag or commit 'no-such-branch' not found"
    assert jobs_of(hub, "alice") == [] and queue(hub) == []


@pytest.mark.parametrize("ref,message", [
    ("--upload-pack=touch /tmp/pwned", "Invalid branch, tag or commit"),
    ("main/../../etc", "Invalid branch, tag or commit"),
    ("ma\x00in", "Invalid branch, tag or commit"),
    ("x" * 100_000, "Ref is too long"),
    ("-x", "Invalid branch, tag or commit"),
])
def test_hostile_refs_are_refused_with_400_and_nothing_queued(hub, ref,
                                                             message):
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    before = len(hub.gitlab.requests_log)
    r = start_server(hub, "alice", "evil", token, ref=ref)
    assert r.status_code == 400, r.text[:300]
    assert r.json()["message"].startswith(message)
    assert "\x00" not in r.json()["message"] and len(r.json()["message"]) < 200
    assert jobs_of(hub, "alice") == [] and queue(hub) == []
    # nothing reached GitLab: the ref was refused before any request (the double's log)
    assert not [p for _, p, _ in hub.gitlab.requests_log[before:] if "/repository/" in p]


@pytest.mark.parametrize("project", ["../etc/passwd", "demo/hello;id", "x" * 5000, "demo"])
def test_hostile_project_paths_are_refused(hub, project):
    hub.login("alice", "alice-pw")
    r = start_server(hub, "alice", "evil", hub.user_token("alice"), project=project)
    assert r.status_code == 400, r.text[:300]
    assert jobs_of(hub, "alice") == []


def test_developer_gets_a_one_time_proxy_grant_never_their_token(
        hub, hb_gitlab, runner_token):
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    r = start_server(hub, "alice", "hello", token)
    assert r.status_code in (201, 202), r.text  # queued: no runner in this test
    job = wait_until(lambda: jobs_of(hub, "alice", "hello"), 30, "job")[0]
    assert job["clone_method"] == "proxy" and job["deploy_key_id"] == ""
    assert job["sha"] == hb_gitlab.demo_sha
    assert hb_gitlab.deploy_keys("demo/hello") == []
    secrets_ = job_secrets(hub, job["id"], runner_token)
    assert set(secrets_["clone"]) == {"method", "secret"}
    assert secrets_["clone"]["method"] == "proxy"
    gl_token = gitlab_token_of(hb_gitlab, "alice")  # the user's token stays on the hub
    assert gl_token not in json.dumps(secrets_)
    raw = "".join(str(v) for v in job.values())
    assert gl_token not in raw and secrets_["clone"]["secret"] not in raw
    stored = hub.redis().get(hub.keys.token(job['id']))
    assert stored.startswith("gAAAA")  # Fernet
    assert hub.api("DELETE", "/users/alice/servers/hello", token=token).status_code in (202, 204)
    wait_gone(hub, "alice", "hello")
    assert jobs_of(hub, "alice", "hello")[0]["state"] == "stopped"
    assert queue(hub) == []


def test_maintainer_gets_a_read_only_deploy_key_removed_at_stop(
        hub, hb_gitlab, runner_token):
    hub.login("maria", "maria-pw")
    token = hub.user_token("maria")
    r = start_server(hub, "maria", "hello", token)
    assert r.status_code in (201, 202), r.text
    job = wait_until(lambda: jobs_of(hub, "maria", "hello"), 30, "job")[0]
    assert job["clone_method"] == "ssh"
    assert job["ssh_url"] == "git@127.0.0.1:demo/hello.git"
    (key,) = hb_gitlab.deploy_keys("demo/hello")
    assert str(key["id"]) == job["deploy_key_id"]
    assert key["can_push"] is False
    assert key["title"] == f"booklab: maria/hello (job {job['id']})"
    assert key["expires_at"]  # a backstop if the hub never gets to delete it
    clone = job_secrets(hub, job["id"], runner_token)["clone"]
    assert clone["method"] == "ssh" and "password" not in clone
    assert clone["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert _public_of(clone["private_key"]) == " ".join(key["key"].split()[:2])

    assert hub.api("DELETE", "/users/maria/servers/hello", token=token).status_code in (202, 204)
    wait_gone(hub, "maria", "hello")
    assert hb_gitlab.deploy_keys("demo/hello") == []
    assert not hub.redis().exists(hub.keys.token(job['id']))


def test_stale_booklab_deploy_keys_are_removed_at_the_next_launch(
        hub, hb_gitlab):
    """A key whose job is over (hub was down at stop) goes at the next maintainer launch;
    keys that Booklab did not create stay."""
    hub.login("maria", "maria-pw")
    gl = hb_gitlab.url + "/api/v4/projects/demo%2Fhello/deploy_keys"
    headers = {"Authorization": f"Bearer {gitlab_token_of(hb_gitlab, 'maria')}"}
    for title in ("booklab: maria/old (job 20200101000000-aaaaaaaaaaaa)", "CI deploy key"):
        r = requests.post(gl, headers=headers, timeout=30,
                          json={"title": title, "key": generate_keypair()[1]})
        assert r.status_code == 201, r.text
    token = hub.user_token("maria")
    assert start_server(hub, "maria", "hello", token).status_code in (201, 202)
    job = wait_until(lambda: jobs_of(hub, "maria", "hello"), 30, "job")[0]
    titles = sorted(k["title"] for k in hb_gitlab.deploy_keys("demo/hello"))
    assert titles == ["CI deploy key", f"booklab: maria/hello (job {job['id']})"]
    hub.api("DELETE", "/users/maria/servers/hello", token=token)
    wait_gone(hub, "maria", "hello")
    assert [k["title"] for k in hb_gitlab.deploy_keys("demo/hello")] == ["CI deploy key"]


@pytest.mark.parametrize("gitlab_config", [
    {"clone_method": "token"},
    # auto without gitlab.ssh_known_hosts: a runner could not verify GitLab's SSH
    # server, so no deploy key is handed out (the launch would fail at the fetch)
    {"clone_method": "auto", "ssh_known_hosts": ""},
], ids=["token", "auto-without-host-key"])
def test_maintainer_fetches_through_the_proxy_without_a_deploy_key(
        make_hub, hb_gitlab, gitlab_config):
    hub = make_hub({"gitlab": gitlab_config})
    hub.login("maria", "maria-pw")
    token = hub.user_token("maria")
    assert start_server(hub, "maria", "hello", token).status_code in (201, 202)
    job = wait_until(lambda: jobs_of(hub, "maria", "hello"), 30, "job")[0]
    assert job["clone_method"] == "proxy" and hb_gitlab.deploy_keys("demo/hello") == []
    hub.api("DELETE", "/users/maria/servers/hello", token=token)
    wait_gone(hub, "maria", "hello")


def test_clone_method_deploy_key_refuses_developers_with_a_message(make_hub):
    hub = make_hub({"gitlab": {"clone_method": "deploy_key"}})
    hub.login("alice", "alice-pw")
    r = start_server(hub, "alice", "hello", hub.user_token("alice"))
    message = spawn_error(hub, "alice", "hello", r)
    assert message.startswith("This hub clones with read-only deploy keys, which need the "
                              "Maintainer role on demo/hello")
    assert jobs_of(hub, "alice") == []


def test_queue_timeout_says_no_runner_is_alive(make_hub):
    hub = make_hub({"runners": {"queue_timeout": 3}})
    hub.login("alice", "alice-pw")
    r = start_server(hub, "alice", "hello", hub.user_token("alice"))
    message = spawn_error(hub, "alice", "hello", r)
    assert message == "No runner took the job within 3 s — no runner is alive: ask the " \
                      "hub's operator to start booklab-runner"
    (job,) = jobs_of(hub, "alice", "hello")
    assert job["state"] == "failed" and job["error"] == message
    assert queue(hub) == []


def _public_of(private_pem: str) -> str:
    key = serialization.load_ssh_private_key(private_pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def test_a_failed_launch_removes_its_deploy_key(make_hub, hb_gitlab):
    hub = make_hub({"runners": {"queue_timeout": 3}})
    hub.login("maria", "maria-pw")
    r = start_server(hub, "maria", "hello", hub.user_token("maria"))
    assert spawn_error(hub, "maria", "hello", r).startswith("No runner took the job")
    (job,) = jobs_of(hub, "maria", "hello")
    assert job["clone_method"] == "ssh" and job["state"] == "failed"
    wait_until(lambda: hb_gitlab.deploy_keys("demo/hello") == [], 30, "deploy key removed")
