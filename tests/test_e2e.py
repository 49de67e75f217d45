"""The whole path once, on real services: GitLab double -> hub -> Redis -> runner ->
repo2docker -> Docker -> CHP -> the notebook, and back down."""

from __future__ import annotations

import time

import pytest
import requests
from docker.errors import NotFound

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def wait_for_server(hub, user: str, server: str, token: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = hub.api("GET", f"/users/{user}", token=token).json()
        srv = model.get("servers", {}).get(server)
        if srv and srv.get("ready"):
            return srv
        if not srv or not srv.get("pending"):
            raise AssertionError(f"server {server} neither pending nor ready: {model}")
        time.sleep(0.5)
    raise AssertionError(f"server {server} not ready after {timeout} s")


def wait_for_stop(hub, user: str, server: str, token: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = hub.api("GET", f"/users/{user}", token=token).json()
        if server not in model.get("servers", {}):
            return
        time.sleep(0.5)
    raise AssertionError(f"server {server} still there after {timeout} s")


def test_launch_demo_hello_lists_repo_files_then_stop_removes_container(
        hub, runner, docker_client, demo_gitlab):
    hub.login("alice", "alice-pw")  # real OAuth flow: stores alice's GitLab token
    token = hub.user_token("alice")

    r = hub.api("POST", "/users/alice/servers/hello", token=token,
                json={"user_options": {"project": "demo/hello", "ref": "main"}})
    assert r.status_code in (201, 202), r.text
    server = wait_for_server(hub, "alice", "hello", token)
    assert server["url"] == "/user/alice/hello/"

    # through the proxy, with the user's own token, like JupyterLab's file browser
    contents = requests.get(
        hub.proxied("/user/alice/hello/api/contents"),
        headers={"Authorization": f"token {token}"}, timeout=30)
    assert contents.status_code == 200, contents.text[:500]
    names = {item["name"] for item in contents.json()["content"]}
    assert {"README.md", "hello.ipynb", "Dockerfile"} <= names

    containers = docker_client.containers.list(
        filters={"label": f"org.booklab.runner={runner.runner_id}"})
    assert len(containers) == 1
    container = containers[0]
    labels = container.labels
    assert labels["org.booklab.user"] == "alice"
    assert labels["org.booklab.project"] == "demo/hello"
    env = "\n".join(container.attrs["Config"]["Env"])
    assert "oauth2" not in env and "GITLAB" not in env  # no GitLab credential in the container

    r = hub.api("DELETE", "/users/alice/servers/hello", token=token)
    assert r.status_code in (202, 204), r.text
    wait_for_stop(hub, "alice", "hello", token)
    with pytest.raises(NotFound):
        docker_client.containers.get(container.id)
    job = hub.job_of("alice", "hello")
    assert job["state"] == "stopped", job
    assert job["sha"] == demo_gitlab.demo_sha
    assert "error" not in job
