"""Booklab's GitLab operations (python-gitlab) against the GitLab double: pages
followed, errors turned into messages a person can act on, ids and URLs checked
before anything is sent, and the user's token in no log line and no URL."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from booklab_spawner import deploykeys, gitlab_api
from booklab_spawner.exceptions import GitLabError
from booklab_spawner.gitlab_api import EXPIRED, GitLabClient

N_BRANCHES = 130  # more than GitLab's largest page (100)


@pytest.fixture
def demo(gitlab):
    """demo/hello with alice (Maintainer), dev (Developer) and guest (Guest)."""
    gitlab.add_project("demo/hello")
    for name, level in (("alice", 40), ("dev", 30), ("guest", 10)):
        gitlab.add_user(name, password=f"{name}-pw")
        gitlab.add_member("demo/hello", name, level)
    gitlab.project_id = gitlab.store.project_by_path("demo/hello").id
    return gitlab


def client_of(gitlab, user: str) -> GitLabClient:
    return GitLabClient(gitlab.url, gitlab.issue_token(user, ["api"])["access_token"])


async def test_every_branch_is_listed_beyond_gitlabs_first_page(demo):
    names = {f"topic-{i:03d}" for i in range(N_BRANCHES)}
    for name in sorted(names):
        demo.commit("demo/hello", name, {"topic.txt": name})

    branches, more = await client_of(demo, "dev").refs(demo.project_id, "branches")

    # GitLab (and the double) answer at most 100 per page: all 131 means pages followed
    assert {b["name"] for b in branches} == names | {"main"} and more is False


async def test_next_page_links_naming_another_host_are_read_from_gitlab_url(demo):
    """GitLab behind a proxy that rewrites Host names that host in its Link header
    (python-gitlab's keep_base_url): the pages still come from gitlab.url, and
    the token goes to no other host."""
    for i in range(N_BRANCHES):
        demo.commit("demo/hello", f"topic-{i:03d}", {"topic.txt": str(i)})
    with socket.socket() as elsewhere:  # bound, never listening
        elsewhere.bind(("127.0.0.1", 0))
        demo.store.link_host = f"127.0.0.1:{elsewhere.getsockname()[1]}"
        branches, _ = await client_of(demo, "dev").refs(demo.project_id, "branches")
    assert len(branches) == N_BRANCHES + 1  # page 2 read from gitlab.url


async def test_refs_beyond_the_limit_say_so(demo, monkeypatch):
    for i in range(5):
        demo.commit("demo/hello", f"b{i}", {"b.txt": str(i)})
    monkeypatch.setattr(gitlab_api, "MAX_REFS", 3)

    branches, more = await client_of(demo, "dev").refs(demo.project_id, "branches")

    assert [b["name"] for b in branches] == ["b0", "b1", "b2"] and more is True


async def test_member_projects_one_page_at_a_time_with_gitlabs_next_page(demo):
    for i in range(24):
        demo.add_project(f"alice/p-{i:02d}")
    alice = client_of(demo, "alice")

    first, next_page = await alice.member_projects(page=1, per_page=20)
    second, last = await alice.member_projects(page=next_page, per_page=20)
    found, _ = await alice.member_projects(search="p-07")

    assert len(first) == 20 and next_page == 2 and len(second) == 5 and last is None
    assert {p["path_with_namespace"] for p in first + second} == \
        {f"alice/p-{i:02d}" for i in range(24)} | {"demo/hello"}
    assert [p["path_with_namespace"] for p in found] == ["alice/p-07"]


async def test_gitlab_errors_become_the_messages_users_see(demo):
    dev, guest = client_of(demo, "dev"), client_of(demo, "guest")
    cases = [
        (dev.project("demo/nope"), 404,
         "Project 'demo/nope' was not found, or your GitLab account cannot read it"),
        (dev.commit(demo.project_id, "feature/nope"), 404,
         "Branch, tag or commit 'feature/nope' not found"),
        (guest.refs(demo.project_id, "branches"), 403,
         "GitLab refused access (403 Forbidden); ask a maintainer of the project for at "
         "least Reporter access"),
        (GitLabClient(demo.url, "revoked-or-never-issued").project("demo/hello"), 401, EXPIRED),
    ]
    for call, status, message in cases:
        with pytest.raises(GitLabError) as e:
            await call
        assert (e.value.status, str(e.value)) == (status, message)


async def test_unreachable_gitlab_is_named_and_status_0():
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}"
        with pytest.raises(GitLabError) as e:
            await GitLabClient(url, "x" * 20).project("demo/hello")
    assert (e.value.status, str(e.value)) == (0, f"GitLab at {url} is unreachable")


async def test_a_silent_gitlab_never_blocks_the_event_loop():
    """python-gitlab blocks its thread; the hub's loop keeps serving meanwhile,
    and the read timeout ends as 'unreachable'."""
    with socket.socket() as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        call = asyncio.ensure_future(GitLabClient(url, "x" * 20, timeout=0.5).project("a/b"))
        loop_ran = asyncio.Event()
        asyncio.get_running_loop().call_soon(loop_ran.set)  # runs after the call started
        await asyncio.wait([call, asyncio.ensure_future(loop_ran.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        assert loop_ran.is_set() and not call.done()
        with pytest.raises(GitLabError) as e:
            await call
    assert (e.value.status, str(e.value)) == (0, f"GitLab at {url} is unreachable")


async def test_deploy_keys_need_maintainer_and_a_deleted_key_is_gone(demo):
    _, public = deploykeys.generate_keypair()
    with pytest.raises(GitLabError) as refused:  # the spawner then falls back to the proxy
        await deploykeys.add(client_of(demo, "dev"), demo.project_id, "booklab: x", public)
    assert refused.value.status == 403 and demo.deploy_keys("demo/hello") == []

    alice = client_of(demo, "alice")
    key_id = await deploykeys.add(alice, demo.project_id, "booklab: x (job j)", public)
    (key,) = demo.deploy_keys("demo/hello")
    assert key["id"] == key_id and key["can_push"] is False and key["expires_at"]
    assert [k["id"] for k in await alice.deploy_keys(demo.project_id)] == [key_id]
    assert await deploykeys.remove(alice, demo.project_id, key_id) is True
    assert await deploykeys.remove(alice, demo.project_id, key_id) is True  # 404: gone
    assert demo.deploy_keys("demo/hello") == []


@pytest.mark.parametrize("url", ["", "gitlab.example.org", "file:///etc/passwd", "http://",
                                 "http://[::1"])
def test_no_usable_gitlab_url_is_refused_before_any_request(url):
    # python-gitlab alone would take "" for https://gitlab.com and send the token there
    with pytest.raises(GitLabError, match="no valid GitLab URL"):
        GitLabClient(url, "x" * 20)


async def test_ids_from_a_job_record_are_checked_before_they_reach_a_url(demo):
    alice = client_of(demo, "alice")
    seen = len(demo.requests_log)
    for bad in ("1/../../users", "1?x=1", "", " 1", "١"):
        with pytest.raises(GitLabError, match="Not a GitLab project id"):
            await alice.commit(bad, "main")
        assert await deploykeys.remove(alice, bad, 1) is False
        assert await deploykeys.remove(alice, demo.project_id, bad) is False
    assert len(demo.requests_log) == seen


async def test_the_token_is_in_no_log_line_and_no_url(demo, caplog):
    caplog.set_level(logging.DEBUG)  # python-gitlab's, requests' and urllib3's too
    token = demo.issue_token("dev", ["api"])["access_token"]
    dev = GitLabClient(demo.url, token)
    await dev.project("demo/hello")
    await dev.member_projects(search="hello")
    await dev.refs(demo.project_id, "tags")
    with pytest.raises(GitLabError):
        await dev.commit(demo.project_id, "nope")
    _, public = deploykeys.generate_keypair()
    with pytest.raises(GitLabError):
        await deploykeys.add(dev, demo.project_id, "booklab: x", public)
    demo.revoke_token(token)
    with pytest.raises(GitLabError):
        await dev.project("demo/hello")

    assert "GET /api/v4/projects?" in caplog.text  # urllib3 logged each request line
    assert token not in caplog.text and token not in repr(dev)
