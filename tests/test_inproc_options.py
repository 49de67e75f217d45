"""Launch options and the permission check, through the in-process hub's REST API and
launch links: refused input gets a clear message and changes nothing (no job, no
queue entry, not even a request to GitLab); a project the user cannot read is
refused with GitLab's answer put in words."""

from __future__ import annotations

import html
from urllib.parse import quote

import pytest
from jupyterhub.tests.utils import public_url

pytestmark = pytest.mark.inproc

# user_options -> the message (400); values from tests/hostile_inputs.py's TOKENS
BAD_OPTIONS = [
    ({"ref": "main"}, "A project path is required, e.g. group/project"),
    ({"project": 42}, "A project path is required, e.g. group/project"),
    ({"project": "hello"}, "Invalid project path 'hello': expected group/project"),
    ({"project": "demo/../etc"}, "Invalid project path 'demo/../etc'"),
    ({"project": "-oProxyCommand=x/y"}, "Invalid project path '-oProxyCommand=x/y'"),
    ({"project": "demo/hello.git"}, "Invalid project path 'demo/hello.git'"),
    ({"project": "demo/hel\x00lo"}, "Invalid project path 'demo/hel?lo'"),
    ({"project": "demo/" + "a" * 1100}, "Project path is too long"),
    ({"project": "demo/hello", "ref": "--upload-pack=touch /tmp/pwned"},
     "Invalid branch, tag or commit '--upload-pack=touch /tmp/pwned'"),
    ({"project": "demo/hello", "ref": "main..evil"}, "Invalid branch, tag or commit "
                                                     "'main..evil'"),
    ({"project": "demo/hello", "ref": "%2e%2e/main"}, "Invalid branch, tag or commit "
                                                      "'%2e%2e/main'"),
    ({"project": "demo/hello", "ref": "ma\x00in"}, "Invalid branch, tag or commit 'ma?in': "
     "it contains an invisible or control character (U+0000)"),
    ({"project": "demo/hello", "ref": "\u202emain"}, "Invalid branch, tag or commit "
     "'?main': it contains an invisible or control character (U+202E)"),
    ({"project": "demo/hello", "ref": "\ud800"}, "Invalid branch, tag or commit '?': it "
     "contains an invisible or control character (U+D800)"),
    ({"project": "demo/hello", "ref": "a" * 300}, "Ref is too long"),
]

# a launch link's ?urlpath= -> the message (400)
BAD_URLPATHS = [
    ("../../hub/admin", "The path to open in the server may not contain '..' "
                        "(nor an encoded '%2e%2e')"),
    ("lab/%2e%2e/%2E%2e/hub", "The path to open in the server may not contain '..' "
                              "(nor an encoded '%2e%2e')"),
    ("//evil.example/", "The path to open in the server must be a path inside it, "
                        "not another address"),
    ("javascript:alert(1)", "The path to open in the server must be a path inside it, "
                            "not another address"),
    ("lab\\..\\hub", "The path to open in the server may not contain '\\'"),
    ("lab/\u202etree", "The path to open in the server contains an invisible or control "
                       "character (U+202E)"),
]


def _gitlab_api_calls(hub) -> list[tuple[str, str, int]]:
    """What the double answered on the REST API, /user (the login's) aside."""
    return [r for r in hub.gitlab.requests_log
            if r[1].startswith("/api/v4/") and r[1] != "/api/v4/user"]


async def _nothing_happened(hub, user: str, what) -> None:
    assert await hub.jobs(user) == [] and await hub.store.queued() == [], what
    assert _gitlab_api_calls(hub) == [], what


async def test_bad_options_are_refused_before_anything_happens(inproc_hub):
    hub = await inproc_hub()
    await hub.login("alice")
    for options, message in BAD_OPTIONS:
        assert await hub.spawn_error("alice", "one", options) == (400, message), options
        await _nothing_happened(hub, "alice", options)


async def test_bad_urlpath_of_a_launch_link_is_refused(inproc_hub):
    hub = await inproc_hub()
    session = await hub.login("alice")
    link = public_url(hub.app, path=f"hub/booklab/v2/gl/{quote('demo/hello', safe='')}/main")
    page = await session.get(link)  # the confirmation page, which sets the XSRF cookie
    assert page.status_code == 200, page.text[:500]
    for urlpath, message in BAD_URLPATHS:
        r = await session.post(link, params={"urlpath": urlpath},
                               data={"_xsrf": session.cookies["_xsrf"]})
        assert r.status_code == 400, (urlpath, r.status_code)
        assert message in html.unescape(r.text), urlpath
        await _nothing_happened(hub, "alice", urlpath)


# user, options -> status, message: the launch is checked with the user's own token
NO_ACCESS = [
    ("bob", {"project": "demo/hello", "ref": "main"}, 400,
     "Project 'demo/hello' was not found, or your GitLab account cannot read it"),
    ("alice", {"project": "demo/nothing-here", "ref": "main"}, 400,
     "Project 'demo/nothing-here' was not found, or your GitLab account cannot read it"),
    ("alice", {"project": "demo/hello", "ref": "no-such-branch"}, 400,
     "Branch, tag or commit 'no-such-branch' not found"),
]


async def test_gitlab_decides_what_a_user_may_launch(inproc_hub):
    hub = await inproc_hub()
    for user, options, status, message in NO_ACCESS:
        await hub.login(user)
        assert await hub.spawn_error(user, "one", options) == (status, message), user
        assert await hub.jobs(user) == [] and await hub.store.queued() == [], user
        assert hub.gitlab.deploy_keys("demo/hello") == [], user


async def test_the_permission_check_asks_gitlab_for_project_and_commit_at_once(inproc_hub):
    """Two round trips to GitLab in the time of one: with a GitLab that takes 0.3 s per
    answer, the commit request arrives before the project's answer has left."""
    hub = await inproc_hub()
    await hub.login("alice")
    hub.gitlab.latency = 0.3
    try:
        request, job = await hub.launch("alice", "at-once", {"project": "demo/hello",
                                                              "ref": "main"})
    finally:
        hub.gitlab.latency = 0
    assert job["sha"] == hub.gitlab.demo_sha
    await hub.end_launch(request, job["id"])
    project = quote("demo/hello", safe="")
    calls = {path: (arrived, answered) for _, path, arrived, answered in hub.gitlab.timings}
    p = calls[f"/api/v4/projects/{project}"]
    c = calls[f"/api/v4/projects/{project}/repository/commits/main"]
    assert c[0] < p[1] and p[0] < c[1], (p, c)  # the two were in flight together
