"""A Maintainer's launch end to end with a read-only deploy key: the runner clones
over SSH (the GitLab double's real sshd) with the key the hub created, the key is in
GitLab while the server runs and gone after it stops."""

from __future__ import annotations

import pytest
import requests

from tests.conftest_hub import (
    add_hub_users,
    jobs_of,
    start_server,
    wait_gone,
    wait_ready,
)
from tests.conftest_stack import seed_demo

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def hb_gitlab(gitlab_ssh):
    """The demo project on a GitLab double that also serves git over SSH."""
    return add_hub_users(seed_demo(gitlab_ssh))


def test_maintainer_launch_clones_with_a_read_only_deploy_key_removed_at_stop(
        make_hub, hb_runner, hb_gitlab, redis_server):
    hub = make_hub({"gitlab": {"clone_method": "deploy_key",
                               "ssh_known_hosts": hb_gitlab.known_hosts}})
    hb_runner(hub)
    hub.login("maria", "maria-pw")
    token = hub.user_token("maria")
    r = start_server(hub, "maria", "hello", token)
    assert r.status_code in (201, 202), r.text
    wait_ready(hub, "maria", "hello")

    (job,) = jobs_of(redis_server, hub, "maria", "hello")
    assert job["clone_method"] == "ssh" and job["ssh_url"].startswith("ssh://git@127.0.0.1:")
    (key,) = hb_gitlab.deploy_keys("demo/hello")
    assert str(key["id"]) == job["deploy_key_id"] and key["can_push"] is False
    files = requests.get(hub.proxied("/user/maria/hello/api/contents"), timeout=30,
                         headers={"Authorization": f"token {token}"})
    assert files.status_code == 200, files.text[:300]
    assert {"README.md", "hello.ipynb"} <= {i["name"] for i in files.json()["content"]}

    assert hub.api("DELETE", "/users/maria/servers/hello").status_code in (202, 204)
    wait_gone(hub, "maria", "hello")
    assert hb_gitlab.deploy_keys("demo/hello") == []
    assert jobs_of(redis_server, hub, "maria", "hello")[0]["state"] == "stopped"
