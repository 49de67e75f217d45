"""A launch link opened from another site builds and starts nothing until the person
confirms with a POST carrying JupyterHub's XSRF token; and a person's servers are
limited (``hub.named_server_limit_per_user``). Real hub, GitLab double and Redis;
no runner, so launches stay queued."""

from __future__ import annotations

import html
import re

import pytest

from booklab_spawner.names import server_name
from tests.conftest_hub import jobs_of, queue, server_model, start_server, wait_gone

pytestmark = [pytest.mark.slow]

LINK = "/hub/booklab/v2/gl/demo%2Fhello/main?labpath=hello.ipynb"
# what a browser sends when another site's link or auto-submitting page is followed
CROSS_SITE = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
              "Referer": "https://evil.example/page"}


def jobs(hub) -> list[dict]:
    return hub.jobs()


def servers(hub, user: str) -> dict:
    return hub.api("GET", f"/users/{user}").json()["servers"]


def named_servers(hub, user: str) -> dict:
    """The user's named servers, stopped ones included (a launch creates its server
    first); every user has the default server's stopped entry, not counted here."""
    found = hub.api("GET", f"/users/{user}?include_stopped_servers=1").json()["servers"]
    return {name: model for name, model in found.items() if name}


def gitlab_api_calls(hub, since: int) -> list[tuple]:
    """Requests to GitLab's REST API since ``since`` (a length of its request log): a
    launch reads the project and resolves the ref there before it queues anything."""
    return [r for r in hub.gitlab.requests_log[since:] if r[1].startswith("/api/v4/projects")]


def test_cross_site_get_of_launch_link_only_asks_and_the_post_launches(pages_hub):
    alice = pages_hub.login("alice", "alice-pw")
    name = server_name("demo/hello", "main")

    seen = len(pages_hub.gitlab.requests_log)
    r = alice.get(pages_hub.url + LINK, headers=CROSS_SITE, timeout=30, allow_redirects=False)
    assert r.status_code == 200, r.text[-2000:]
    page = html.unescape(r.text)
    assert 'id="confirm-form"' in page and 'method="post"' in page
    assert "demo/hello" in page and "lab/tree/hello.ipynb" in page
    # the answer is the event: a launching handler creates the server and waits for its
    # job (LaunchMixin.launch) before it answers; this one made neither, asked GitLab
    # nothing, and so cannot have started a launch behind the page
    assert jobs(pages_hub) == [] and pages_hub.redis().llen(pages_hub.keys.queue) == 0
    assert named_servers(pages_hub, "alice") == {}
    assert gitlab_api_calls(pages_hub, seen) == []

    # the form posts back to the link itself; without the XSRF token: refused
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', r.text)[1])
    assert action == LINK
    r = alice.post(pages_hub.url + action, headers=CROSS_SITE, timeout=30,
                   allow_redirects=False)
    assert r.status_code == 403
    assert jobs(pages_hub) == [] and servers(pages_hub, "alice") == {}
    # a token from another person's session does not do either
    bob = pages_hub.login("bob", "bob-pw")
    r = alice.post(pages_hub.url + action, data={"_xsrf": bob.cookies.get("_xsrf")},
                   timeout=30, allow_redirects=False)
    assert r.status_code == 403 and jobs(pages_hub) == []

    # the confirming click: the page's own token
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page)
    r = alice.post(pages_hub.url + action, data={"_xsrf": xsrf[1]}, timeout=30,
                   allow_redirects=False)
    assert r.status_code == 302, r.text[-2000:]
    assert "/hub/booklab/jobs/" in r.headers["Location"]
    assert "next=lab%2Ftree%2Fhello.ipynb" in r.headers["Location"]
    [job] = jobs(pages_hub)
    assert (job["user"], job["project"], job["ref"], job["server_name"]) == (
        "alice", "demo/hello", "main", name)
    assert pages_hub.redis().lrange(pages_hub.keys.queue, 0, -1) == [job["id"]]

    # the link again, now that the server is starting: to its log, nothing new queued
    r = alice.get(pages_hub.url + LINK, headers=CROSS_SITE, timeout=30, allow_redirects=False)
    assert r.status_code == 302 and f"/hub/booklab/jobs/{job['id']}" in r.headers["Location"]
    assert len(jobs(pages_hub)) == 1


def test_hub_spawn_url_with_query_options_starts_nothing(pages_hub):
    """JupyterHub's own /hub/spawn takes options from a GET's query: not for Booklab."""
    alice = pages_hub.login("alice", "alice-pw")
    seen = len(pages_hub.gitlab.requests_log)
    r = alice.get(pages_hub.url + "/hub/spawn/alice/sneaky?opt-project=demo/hello&opt-ref=main",
                  headers=CROSS_SITE, timeout=30)
    assert r.status_code in (200, 400) and 'method="post"' in r.text.lower()
    # JupyterHub answers a spawning GET only after the spawn began (the server pending,
    # then the spawner asking GitLab); the form came back, and none of that happened:
    # the server JupyterHub made for the form was never started
    assert jobs(pages_hub) == []
    assert "sneaky" not in servers(pages_hub, "alice")
    sneaky = named_servers(pages_hub, "alice")["sneaky"]
    assert (sneaky["pending"], sneaky["started"], sneaky["ready"]) == (None, None, False)
    assert gitlab_api_calls(pages_hub, seen) == []


def test_launch_link_refuses_bad_input_before_asking(pages_hub):
    alice = pages_hub.login("alice", "alice-pw")
    r = alice.get(pages_hub.url + "/hub/booklab/v2/gl/demo%2Fhello/--upload-pack=x",
                  timeout=30)
    assert r.status_code == 400 and "confirm-form" not in r.text


def launch_form(session, hub, ref: str):
    return session.post(hub.url + "/hub/booklab/launch", timeout=60, allow_redirects=False,
                        data={"_xsrf": session.cookies.get("_xsrf"), "project": "demo/hello",
                              "ref": ref})


def test_servers_per_user_are_limited_with_a_clear_message(make_hub, hb_gitlab):
    for branch in ("b1", "b2", "b3"):
        hb_gitlab.commit("demo/hello", branch, {f"{branch}.txt": branch}, message=branch)
    hub = make_hub()  # the default limit: 3
    alice = hub.login("alice", "alice-pw")
    for ref in ("main", "b1", "b2"):
        r = launch_form(alice, hub, ref)
        assert r.status_code == 302 and "/hub/booklab/jobs/" in r.headers["Location"], r.text
    assert len(jobs_of(hub, "alice")) == 3

    r = launch_form(alice, hub, "b3")
    assert r.status_code == 400
    assert ("You already have 3 servers running or starting, the most this hub allows "
            "at a time (3)") in html.unescape(r.text)
    assert len(jobs_of(hub, "alice")) == 3 and len(queue(hub)) == 3

    # JupyterHub's REST API refuses too, with its own words
    r = start_server(hub, "alice", "fourth", hub.user_token("alice"))
    assert r.status_code == 400
    assert "already has the maximum of 3 named servers" in r.json()["message"]

    # stopping one makes room: the stopped server is removed, the new launch goes ahead
    stopped = server_name("demo/hello", "b1")
    r = alice.post(hub.url + "/hub/booklab/stop", timeout=60, allow_redirects=False,
                   data={"_xsrf": alice.cookies.get("_xsrf"), "name": stopped})
    assert r.status_code == 302
    wait_gone(hub, "alice", stopped)
    assert server_model(hub, "alice", stopped) is None
    r = launch_form(alice, hub, "b3")
    assert r.status_code == 302 and "/hub/booklab/jobs/" in r.headers["Location"], r.text
    names = set(hub.api("GET", "/users/alice?include_stopped_servers=1").json()["servers"])
    assert stopped not in names and server_name("demo/hello", "b3") in names
