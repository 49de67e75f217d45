"""GitLab login through the real OAuth redirect flow (hub process + GitLab double):
encrypted auth state with the token's expiry, scopes that follow the clone method,
allowed groups (subgroups too) and projects, and tokens that expire or are revoked."""

from __future__ import annotations

import sqlite3
import time
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from tests.conftest_hub import (
    NO_SPAWN_WAIT,
    gitlab_token_of,
    job_secrets,
    jobs_of,
    queue,
    start_server,
    wait_gone,
    wait_until,
)


def browser_login(hub, username: str, password: str) -> tuple[requests.Session,
                                                               requests.Response]:
    """Follow the OAuth redirects as a browser; return the session and the last page."""
    s = requests.Session()
    r = s.get(f"{hub.url}/hub/oauth_login", timeout=30)
    assert "/users/sign_in" in r.url, r.url
    r = s.post(r.url, data={"username": username, "password": password}, timeout=30)
    return s, r


def auth_state(hub, user: str) -> dict:
    r = hub.api("GET", f"/users/{user}")
    assert r.status_code == 200, r.text
    return r.json()["auth_state"]


def test_login_keeps_the_token_encrypted_with_its_expiry(make_hub, hb_gitlab):
    hub = make_hub()
    _, page = browser_login(hub, "alice", "alice-pw")
    assert page.status_code == 200 and page.url == f"{hub.url}/hub/booklab/"
    state = auth_state(hub, "alice")
    assert state["access_token"] == gitlab_token_of(hb_gitlab, "alice")
    assert state["refresh_token"] and state["scope"] == ["api"]
    assert abs(state["expires_at"] - (time.time() + 7200)) < 120
    # at rest in the hub's database the token is encrypted with JUPYTERHUB_CRYPT_KEY
    with sqlite3.connect(hub.workdir / "hub.sqlite") as db:
        (blob,) = db.execute("SELECT encrypted_auth_state FROM users WHERE name='alice'"
                             ).fetchone()
    assert blob and state["access_token"].encode() not in blob
    assert state["refresh_token"].encode() not in blob


@pytest.mark.parametrize("method,scopes", [
    ("auto", ["api"]), ("deploy_key", ["api"]),
    ("token", ["read_user", "read_api", "read_repository"]),
])
def test_scopes_follow_the_clone_method(make_hub, method, scopes):
    hub = make_hub({"gitlab": {"clone_method": method}})
    r = requests.get(f"{hub.url}/hub/oauth_login", allow_redirects=False, timeout=30)
    assert r.status_code == 302
    query = parse_qs(urlparse(r.headers["Location"]).query)
    assert query["scope"] == [" ".join(scopes)]
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    _, page = browser_login(hub, "alice", "alice-pw")
    assert page.status_code == 200
    assert auth_state(hub, "alice")["scope"] == scopes


def test_members_of_an_allowed_subgroup_log_in_others_are_refused(make_hub, hb_gitlab):
    hb_gitlab.add_group("lab")
    hb_gitlab.add_group("lab/course")
    hb_gitlab.add_user("gus", password="gus-pw")
    hb_gitlab.add_member("lab/course", "alice", 30)  # direct member of the subgroup
    hb_gitlab.add_member("lab", "gus", 10)  # inherited from the parent group
    hub = make_hub({"gitlab": {"allow_all": False, "allowed_groups": ["lab/course"]}})
    for user in ("alice", "gus"):
        _, page = browser_login(hub, user, f"{user}-pw")
        assert page.status_code == 200 and page.url == f"{hub.url}/hub/booklab/", user
    _, page = browser_login(hub, "bob", "bob-pw")
    assert page.status_code == 403
    assert "you are not currently authorized to use this hub" in page.text
    assert hub.api("GET", "/users/bob").status_code == 404  # no hub user was made


def test_members_of_an_allowed_project_log_in_by_path(make_hub, hb_gitlab):
    hb_gitlab.add_user("rita", password="rita-pw")
    hb_gitlab.add_member("demo/hello", "rita", 20)  # Reporter: below Developer
    hub = make_hub({"gitlab": {"allow_all": False, "allowed_projects": ["demo/hello"]}})
    for user, code in (("alice", 200), ("maria", 200), ("rita", 403), ("bob", 403)):
        _, page = browser_login(hub, user, f"{user}-pw")
        assert page.status_code == code, user


def launch_and_read_clone_token(hub, runner_token, user="alice") -> str:
    r = start_server(hub, user, "hello", hub.user_token(user))
    assert r.status_code in (201, 202), r.text
    job = wait_until(lambda: jobs_of(hub, user, "hello"), 30, "job")[0]
    # the token resolved the ref (the job exists); runners get a proxy grant, not it
    assert job_secrets(hub, job["id"], runner_token)["clone"]["method"] == "proxy"
    return auth_state(hub, user)["access_token"]


def stop(hub, user="alice"):
    hub.api("DELETE", f"/users/{user}/servers/hello")
    wait_gone(hub, user, "hello")


def test_an_expired_token_is_refreshed_before_the_launch(make_hub, hb_gitlab, runner_token):
    hub = make_hub({"gitlab": {"clone_method": "token"}}, extra_config=NO_SPAWN_WAIT)
    browser_login(hub, "alice", "alice-pw")
    old = auth_state(hub, "alice")["access_token"]
    hb_gitlab.expire_token(old)  # GitLab says it is over, earlier than the hub expected
    used = launch_and_read_clone_token(hub, runner_token)
    assert used != old and used == gitlab_token_of(hb_gitlab, "alice")
    assert auth_state(hub, "alice")["access_token"] == used
    stop(hub)


def test_a_token_near_its_expiry_is_refreshed_before_the_launch(make_hub, hb_gitlab,
                                                                runner_token):
    # tokens live 7200 s; demanding 7199 s left makes every launch more than a second
    # after the login refresh first (and the new token expire later than the old one)
    hub = make_hub({"gitlab": {"clone_method": "token", "token_min_lifetime": 7199}},
                   extra_config=NO_SPAWN_WAIT)
    browser_login(hub, "alice", "alice-pw")
    time.sleep(2)
    old = auth_state(hub, "alice")
    used = launch_and_read_clone_token(hub, runner_token)
    assert used != old["access_token"]
    new = auth_state(hub, "alice")
    assert new["access_token"] == used and new["refresh_token"] != old["refresh_token"]
    assert new["expires_at"] > old["expires_at"]
    assert hb_gitlab.store.tokens[old["access_token"]].revoked  # GitLab rotated the pair
    stop(hub)


def test_a_revoked_token_means_logging_in_again(make_hub, hb_gitlab):
    hub = make_hub()
    session, _ = browser_login(hub, "alice", "alice-pw")
    hb_gitlab.revoke_token(auth_state(hub, "alice")["access_token"])
    # through the API: the launch is refused with what to do, nothing is queued
    r = start_server(hub, "alice", "hello", hub.user_token("alice"))
    assert r.status_code == 403, r.text
    assert r.json()["message"] == ("Your GitLab login has expired or was revoked: log out "
                                   "and log in again")
    assert jobs_of(hub, "alice") == [] and queue(hub) == []
    # in the browser (the spawn form's POST; a GET with options starts nothing): the
    # spawn page says to log in again
    session.get(f"{hub.url}/hub/spawn/alice/other", timeout=30)
    r = session.post(f"{hub.url}/hub/spawn/alice/other", timeout=30, data={
        "_xsrf": session.cookies.get("_xsrf"), "project": "demo/hello", "ref": "main"})
    assert r.status_code == 403, r.text[-2000:]
    assert "auth has expired for alice, login again" in r.text
    assert 'name="project"' in r.text  # the form to try again is on the same page
    assert jobs_of(hub, "alice") == []
    # and after logging in again, launches work
    browser_login(hub, "alice", "alice-pw")
    r = start_server(hub, "alice", "hello", hub.user_token("alice"))
    assert r.status_code in (201, 202), r.text
    stop(hub)
