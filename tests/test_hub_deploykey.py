"""A Maintainer's launch end to end with a read-only deploy key: the runner clones
over SSH (the GitLab double's real sshd) with the key the hub created; the key and the
encrypted clone credential are gone as soon as the fetch is over (while the server
runs), and a failed removal is retried."""

from __future__ import annotations

import pytest
import requests

from tests.conftest_hub import (
    MAINTAINER,
    add_hub_users,
    job_secrets,
    jobs_of,
    start_server,
    wait_gone,
    wait_ready,
    wait_until,
)
from tests.conftest_stack import seed_demo

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def hb_gitlab(gitlab_ssh):
    """The demo project on a GitLab double that also serves git over SSH."""
    return add_hub_users(seed_demo(gitlab_ssh))


def test_maintainer_launch_clones_with_a_read_only_deploy_key_removed_after_the_fetch(
        make_hub, hb_runner, hb_gitlab, runner_token):
    hub = make_hub({"gitlab": {"clone_method": "deploy_key",
                               "ssh_known_hosts": hb_gitlab.known_hosts}})
    hub.login("maria", "maria-pw")
    token = hub.user_token("maria")
    r = start_server(hub, "maria", "hello", token)
    assert r.status_code in (201, 202), r.text
    (job,) = wait_until(lambda: jobs_of(hub, "maria", "hello"), 30, "job")
    (key,) = hb_gitlab.deploy_keys("demo/hello")  # added for the launch, before the fetch
    assert str(key["id"]) == job["deploy_key_id"] and key["can_push"] is False
    hb_runner(hub)
    wait_ready(hub, "maria", "hello")

    (job,) = jobs_of(hub, "maria", "hello")
    assert job["clone_method"] == "ssh" and job["ssh_url"].startswith("ssh://git@127.0.0.1:")
    # the fetch is over: no deploy key in GitLab, no clone credential in Redis
    wait_until(lambda: hb_gitlab.deploy_keys("demo/hello") == [], 30, "deploy key removed")
    assert "clone" not in job_secrets(hub, job["id"], runner_token)
    files = requests.get(hub.proxied("/user/maria/hello/api/contents"), timeout=30,
                         headers={"Authorization": f"token {token}"})
    assert files.status_code == 200, files.text[:300]
    assert {"README.md", "hello.ipynb"} <= {i["name"] for i in files.json()["content"]}

    assert hub.api("DELETE", "/users/maria/servers/hello").status_code in (202, 204)
    wait_gone(hub, "maria", "hello")
    assert hb_gitlab.deploy_keys("demo/hello") == []
    assert jobs_of(hub, "maria", "hello")[0]["state"] == "stopped"


def test_a_failed_deploy_key_removal_is_retried(make_hub, hb_runner, hb_gitlab):
    """GitLab refuses the delete (maria lost Maintainer right after the launch); the hub
    retries, and once she has it back the key goes, while the server runs."""
    hub = make_hub({"gitlab": {"clone_method": "deploy_key",
                               "ssh_known_hosts": hb_gitlab.known_hosts}})
    hub.login("maria", "maria-pw")
    token = hub.user_token("maria")
    assert start_server(hub, "maria", "retry", token).status_code in (201, 202)
    (job,) = wait_until(lambda: jobs_of(hub, "maria", "retry"), 30, "job")
    hb_gitlab.add_member("demo/hello", "maria", 30)  # Developer: cannot delete keys
    hb_runner(hub)
    wait_until(lambda: "Retrying the removal of deploy key" in hub.process.output(), 300,
               "a retried removal")
    assert len(hb_gitlab.deploy_keys("demo/hello")) == 1
    hb_gitlab.add_member("demo/hello", "maria", MAINTAINER)
    wait_until(lambda: hb_gitlab.deploy_keys("demo/hello") == [], 30, "key removed on retry")
    wait_ready(hub, "maria", "retry")
    assert hub.redis().hget(hub.keys.job(job['id']), "state") == "running"
    hub.api("DELETE", "/users/maria/servers/retry")
    wait_gone(hub, "maria", "retry")
