"""The admin page's cancel of a job no server owns (an orphan: its server is gone from
the hub, or never existed there), on a real hub with a real runner: the admin's button
must still end it, on the queue or on its runner."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from docker.errors import NotFound

from tests.conftest_hub import HB_IMAGE_PREFIX, queue
from tests.conftest_runner import LaunchDouble

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def cancel(admin, hub, job_id: str) -> str:
    """Press Cancel on the admin page; the message the page then shows."""
    r = admin.post(f"{hub.url}/hub/booklab/admin/jobs/{job_id}/cancel", timeout=60,
                   data={"_xsrf": admin.cookies.get("_xsrf")}, allow_redirects=False)
    assert r.status_code == 302, r.text[-500:]
    location = urlsplit(r.headers["Location"])
    assert location.path == "/hub/booklab/admin"
    return parse_qs(location.query)["message"][0]


async def test_admin_cancels_orphans_on_the_queue_and_on_their_runner(
        make_hub, hb_runner, hb_gitlab, redis, runner_token, docker_client):
    """Two jobs of a server the hub does not have (alice/ghost), written as the hub
    writes jobs: one running on the only runner, one queued behind it. Cancel takes
    the queued one off the queue, and asks the runner to stop the running one, which
    ends ``stopped`` with its container removed."""
    hub = make_hub()
    hb_runner(hub)
    orphans = LaunchDouble(redis, hub.keys, runner_token, hb_gitlab)
    orphans.conf.image_prefix = HB_IMAGE_PREFIX  # removed by hb_runner's clean-up
    try:
        running = await orphans.launch("demo/hello", hb_gitlab.demo_sha, server_name="ghost")
        container = (await orphans.wait_state(running, "running"))["container"]
        queued = await orphans.launch("demo/hello", hb_gitlab.demo_sha, server_name="ghost")
        assert queue(hub) == [queued]  # the runner's one slot is taken

        admin = hub.login("admin", "admin-pw")
        assert cancel(admin, hub, queued) == f"Cancelled queued job {queued}"
        assert (await orphans.store.get(queued))["state"] == "stopped"
        assert queue(hub) == []

        runner = (await orphans.store.get(running))["runner"]
        assert cancel(admin, hub, running) == f"Asked runner {runner} to stop job {running}"
        assert (await orphans.wait_state(running, ("stopped", "failed")))["state"] == "stopped"
        with pytest.raises(NotFound):
            docker_client.containers.get(container)
        assert (await orphans.store.get(queued))["state"] == "stopped"  # never started
    finally:
        await orphans.close()
