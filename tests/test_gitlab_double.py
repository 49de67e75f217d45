"""The GitLab double behaves like GitLab where Booklab depends on it.

Real HTTP with `requests`, the real `git` binary, and oauthenticator's own
GitLab client code against the double.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

REDIRECT = "http://127.0.0.1:8000/hub/oauth_callback"
CLIENT_ID, CLIENT_SECRET = "booklab", "booklab-secret"
STATE = "eyJzdGF0ZV9pZCI6ICJhYmMifQ=="  # base64 with padding: must come back unchanged


@pytest.fixture
def gl(role_gitlab):
    """role_gitlab's users and project, and an OAuth application."""
    gitlab = role_gitlab
    gitlab.add_oauth_app(CLIENT_ID, CLIENT_SECRET, redirect_uri=REDIRECT,
                         scopes=["api", "read_api", "read_user", "read_repository"])
    return gitlab


def api(gl, path, token=None, method="GET", **kwargs):
    headers = kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, f"{gl.url}/api/v4{path}", headers=headers, timeout=10,
                            allow_redirects=False, **kwargs)


def token(gl, user, scopes=("api",)):
    return gl.issue_token(user, scopes=list(scopes))["access_token"]


def authorize(gl, session, scope="api read_user", **extra):
    params = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "response_type": "code",
              "state": STATE, "scope": scope, **extra}
    return session.get(f"{gl.url}/oauth/authorize", params=params, allow_redirects=False,
                       timeout=10)


def sign_in(gl, session, user, password):
    return session.post(f"{gl.url}/users/sign_in", data={"username": user, "password": password},
                        allow_redirects=False, timeout=10)


def code_for(gl, user, **extra):
    session = requests.Session()
    authorize(gl, session, **extra)
    back = sign_in(gl, session, user, f"{user}-pw")
    redirect = session.get(gl.url + back.headers["Location"], allow_redirects=False, timeout=10)
    return parse_qs(urlparse(redirect.headers["Location"]).query)["code"][0]


def exchange(gl, data, auth=None):
    return requests.post(f"{gl.url}/oauth/token", data=data, auth=auth, timeout=10)


def code_grant(code, **extra):
    return {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **extra}


# -- OAuth2 -------------------------------------------------------------------
def test_authorization_code_flow_end_to_end(gl):
    session = requests.Session()
    first = authorize(gl, session)
    assert first.status_code == 302 and first.headers["Location"] == "/users/sign_in"
    form = session.get(gl.url + "/users/sign_in", timeout=10)
    assert 'id="user_login"' in form.text and 'id="user_password"' in form.text
    assert 'name="commit"' in form.text

    wrong = sign_in(gl, session, "alice", "nope")
    assert wrong.status_code == 200 and "Invalid login or password." in wrong.text
    assert "Set-Cookie" not in wrong.headers

    ok = sign_in(gl, session, "alice", "alice-pw")
    assert ok.status_code == 302 and "_gitlab_session" in ok.cookies
    assert ok.headers["Location"].startswith("/oauth/authorize?")
    back = session.get(gl.url + ok.headers["Location"], allow_redirects=False, timeout=10)
    target = urlparse(back.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == REDIRECT
    query = parse_qs(target.query)
    assert query["state"] == [STATE]

    resp = exchange(gl, code_grant(query["code"][0]))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 7200
    assert body["scope"] == "api read_user" and body["refresh_token"]
    assert isinstance(body["created_at"], int)
    me = api(gl, "/user", body["access_token"]).json()
    assert me["username"] == "alice" and me["email"] == "alice@example.com"

    again = exchange(gl, code_grant(query["code"][0]))
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_authorize_refuses_unknown_client_bad_redirect_and_scope(gl):
    session = requests.Session()
    unknown = authorize(gl, session, client_id="nope")
    assert unknown.status_code == 401 and "Location" not in unknown.headers
    assert "text/html" in unknown.headers["Content-Type"]
    bad_uri = authorize(gl, session, redirect_uri="http://evil.example/cb")
    assert bad_uri.status_code == 400 and "Location" not in bad_uri.headers
    bad_scope = authorize(gl, session, scope="api sudo")
    query = parse_qs(urlparse(bad_scope.headers["Location"]).query)
    assert bad_scope.headers["Location"].startswith(REDIRECT)
    assert query["error"] == ["invalid_scope"] and query["state"] == [STATE]


def test_token_endpoint_checks_client_redirect_and_pkce(gl):
    code = code_for(gl, "alice")
    wrong_secret = exchange(gl, code_grant(code, client_secret="bad"))
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    wrong_uri = exchange(gl, code_grant(code, redirect_uri=REDIRECT + "x"))
    assert wrong_uri.status_code == 400 and wrong_uri.json()["error"] == "invalid_grant"

    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    pkce = {"code_challenge": challenge.decode().rstrip("="), "code_challenge_method": "S256"}
    code = code_for(gl, "alice", **pkce)
    basic = (CLIENT_ID, CLIENT_SECRET)
    no_verifier = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    assert exchange(gl, no_verifier, auth=basic).json()["error"] == "invalid_grant"
    code = code_for(gl, "alice", **pkce)
    ok = exchange(gl, {**no_verifier, "code": code, "code_verifier": verifier}, auth=basic)
    assert ok.status_code == 200 and ok.json()["token_type"] == "Bearer"


def test_refresh_rotates_tokens(gl):
    first = exchange(gl, code_grant(code_for(gl, "alice"))).json()
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
               "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    second = exchange(gl, refresh)
    assert second.status_code == 200
    new = second.json()
    assert new["access_token"] != first["access_token"]
    assert new["refresh_token"] != first["refresh_token"] and new["scope"] == first["scope"]
    assert api(gl, "/user", new["access_token"]).status_code == 200
    reused = exchange(gl, refresh)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    old = api(gl, "/user", first["access_token"])
    assert old.status_code == 401 and old.json()["error"] == "invalid_token"


def test_expired_and_revoked_tokens_are_401(gl):
    expired = token(gl, "alice")
    gl.expire_token(expired)
    resp = api(gl, "/user", expired)
    assert resp.status_code == 401
    assert resp.json() == {"error": "invalid_token", "error_description":
                           "Token is expired. You can either do re-authorization or token "
                           "refresh."}
    issued = exchange(gl, code_grant(code_for(gl, "alice"))).json()
    info = requests.get(f"{gl.url}/oauth/token/info", timeout=10,
                        headers={"Authorization": f"Bearer {issued['access_token']}"}).json()
    assert info["application"] == {"uid": CLIENT_ID} and info["scope"] == ["api", "read_user"]
    assert 7000 < info["expires_in"] <= 7200
    revoked = requests.post(f"{gl.url}/oauth/revoke", timeout=10, data={
        "token": issued["access_token"], "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    assert revoked.status_code == 200
    resp = api(gl, "/user", issued["access_token"])
    assert resp.status_code == 401 and resp.json()["error_description"].startswith(
        "Token was revoked.")


def test_missing_or_unknown_token_and_scopes(gl):
    assert api(gl, "/user").json() == {"message": "401 Unauthorized"}
    assert api(gl, "/user", "not-a-token").status_code == 401
    read_user = token(gl, "alice", ["read_user"])
    assert api(gl, "/user", read_user).status_code == 200
    denied = api(gl, "/projects", read_user)
    assert denied.status_code == 403
    assert denied.json() == {"error": "insufficient_scope", "error_description":
                             "The request requires higher privileges than provided by the "
                             "access token.", "scope": "api read_api"}
    read_api = token(gl, "maya", ["read_api"])
    assert api(gl, "/projects", read_api).status_code == 200
    post = api(gl, "/projects/demo%2Fhello/deploy_keys", read_api, "POST", json={})
    assert post.status_code == 403 and post.json()["scope"] == "api"
    assert api(gl, "/user", token(gl, "alice", ["read_repository"])).status_code == 403
    assert api(gl, "/projects", headers={"PRIVATE-TOKEN": read_api}).status_code == 200
    assert api(gl, f"/projects?access_token={read_api}").status_code == 200


# -- projects -----------------------------------------------------------------
def test_pagination_headers_like_gitlab(gitlab):
    gitlab.add_user("alice")
    for i in range(45):
        gitlab.add_project(f"many/p{i:02d}")
    gitlab.add_member("many", "alice", 30)
    tok = token(gitlab, "alice")
    first = api(gitlab, "/projects?membership=true&per_page=20", tok)
    h = first.headers
    assert (h["X-Total"], h["X-Total-Pages"], h["X-Page"], h["X-Per-Page"]) == \
        ("45", "3", "1", "20")
    assert (h["X-Next-Page"], h["X-Prev-Page"]) == ("2", "")
    links = requests.utils.parse_header_links(h["Link"])
    rels = {link["rel"]: parse_qs(urlparse(link["url"]).query) for link in links}
    assert set(rels) == {"next", "first", "last"}
    assert rels["next"]["page"] == ["2"] and rels["last"]["page"] == ["3"]
    assert rels["next"]["membership"] == ["true"]
    assert [p["path"] for p in first.json()][:2] == ["p44", "p43"]  # created_at desc

    middle = api(gitlab, "/projects?membership=true&per_page=20&page=2", tok).headers
    assert (middle["X-Next-Page"], middle["X-Prev-Page"]) == ("3", "1")
    assert {link["rel"] for link in requests.utils.parse_header_links(middle["Link"])} == \
        {"prev", "next", "first", "last"}
    last = api(gitlab, "/projects?membership=true&per_page=20&page=3", tok)
    assert len(last.json()) == 5 and last.headers["X-Next-Page"] == ""
    assert api(gitlab, "/projects?per_page=500", tok).headers["X-Per-Page"] == "100"


def test_search_order_and_permissions(gl):
    gl.add_project("demo/notebooks-course")
    gl.add_project("demo/other")
    gl.add_member("demo", "alice", 30)
    tok = token(gl, "alice")
    found = api(gl, "/projects?membership=true&search=NOTEBOOK", tok).json()
    assert [p["path_with_namespace"] for p in found] == ["demo/notebooks-course"]

    gl.commit("demo/hello", "main", {"new.txt": "x"})
    recent = api(gl, "/projects?membership=true&order_by=last_activity_at", tok).json()
    assert recent[0]["path_with_namespace"] == "demo/hello"
    by_name = api(gl, "/projects?order_by=name&sort=asc&simple=true", tok).json()
    assert [p["name"] for p in by_name] == ["hello", "notebooks-course", "other"]
    assert "permissions" not in by_name[0]
    hello = api(gl, "/projects/demo%2Fhello", tok).json()
    assert hello["permissions"] == {
        "project_access": {"access_level": 30, "notification_level": 3},
        "group_access": {"access_level": 30, "notification_level": 3}}
    assert hello["namespace"]["kind"] == "group" and hello["default_branch"] == "main"
    assert hello["http_url_to_repo"] == f"{gl.url}/demo/hello.git"
    bad = api(gl, "/projects?order_by=stars", tok)
    assert bad.status_code == 400
    assert bad.json() == {"error": "order_by does not have a valid value"}


def test_private_projects_are_hidden_with_404(gl):
    bob = token(gl, "bob")
    for ref in ("1", "demo%2Fhello"):
        resp = api(gl, f"/projects/{ref}", bob)
        assert resp.status_code == 404 and resp.json() == {"message": "404 Project Not Found"}
    assert api(gl, "/projects/demo%2Fhello/repository/branches", bob).status_code == 404
    assert api(gl, "/projects/demo%2Fhello").status_code == 404
    assert api(gl, "/projects?membership=true", bob).json() == []
    gl.add_project("demo/open", visibility="public")
    gl.add_project("demo/inside", visibility="internal")
    assert api(gl, "/projects/demo%2Fopen").status_code == 200
    assert api(gl, "/projects/demo%2Finside").status_code == 404
    assert api(gl, "/projects/demo%2Finside/repository/branches", bob).status_code == 200


def test_guest_cannot_read_code_of_private_project(gl):
    gus = token(gl, "gus")
    assert api(gl, "/projects/demo%2Fhello", gus).status_code == 200
    for path in ("branches", "tags", "commits/main"):
        resp = api(gl, f"/projects/demo%2Fhello/repository/{path}", gus)
        assert resp.status_code == 403 and resp.json() == {"message": "403 Forbidden"}
    assert api(gl, "/projects/demo%2Fhello/repository/commits/main",
               token(gl, "rita")).status_code == 200


def test_branches_tags_and_commits(gl):
    tok = token(gl, "rita")
    main_sha = api(gl, "/projects/1/repository/commits/main", tok).json()["id"]
    feature_sha = gl.commit("demo/hello", "feature/nb", {"nb.ipynb": "{}", "README.md": None},
                            message="Add notebook\n\nLonger body")
    gl.create_tag("demo/hello", "v1", ref="main")
    gl.create_tag("demo/hello", "v2", ref="feature/nb", message="Release 2")

    branches = api(gl, "/projects/demo%2Fhello/repository/branches", tok).json()
    assert [b["name"] for b in branches] == ["feature/nb", "main"]
    assert branches[1]["default"] and branches[1]["protected"] and not branches[0]["merged"]
    one = api(gl, "/projects/demo%2Fhello/repository/branches/feature%2Fnb", tok).json()
    assert one["commit"]["id"] == feature_sha and one["commit"]["title"] == "Add notebook"
    assert one["commit"]["message"].startswith("Add notebook\n\nLonger body")
    assert one["commit"]["parent_ids"] == [main_sha]
    missing = api(gl, "/projects/demo%2Fhello/repository/branches/nope", tok)
    assert missing.status_code == 404 and missing.json() == {"message": "404 Branch Not Found"}
    search = api(gl, "/projects/1/repository/branches?search=^feat", tok).json()
    assert [b["name"] for b in search] == ["feature/nb"]

    tags = {t["name"]: t for t in api(gl, "/projects/1/repository/tags", tok).json()}
    assert tags["v1"]["commit"]["id"] == main_sha and tags["v1"]["message"] == ""
    assert tags["v2"]["commit"]["id"] == feature_sha and tags["v2"]["target"] != feature_sha
    assert api(gl, "/projects/1/repository/tags/v2", tok).json()["message"].startswith("Release 2")
    assert api(gl, "/projects/1/repository/tags/v9", tok).json() == {"message": "404 Tag Not Found"}

    for ref in ("feature%2Fnb", "v2", feature_sha, feature_sha[:10]):
        commit = api(gl, f"/projects/demo%2Fhello/repository/commits/{ref}", tok).json()
        assert commit["id"] == feature_sha and commit["short_id"] == feature_sha[:8]
    assert commit["stats"]["deletions"] == 1 and commit["author_name"] == "Administrator"
    for bad in ("nope", "0" * 40, "--upload-pack=touch%20x", "main..v1"):
        resp = api(gl, f"/projects/1/repository/commits/{bad}", tok)
        assert resp.status_code == 404 and resp.json() == {"message": "404 Commit Not Found"}
    # as GitLab: a ref is one path segment, so a slash in it must come encoded
    for path in ("commits/feature/nb", "branches/feature/nb", "tags/feature/nb"):
        resp = api(gl, f"/projects/1/repository/{path}", tok)
        assert resp.status_code == 404 and "id" not in resp.json(), (path, resp.text)


def test_subgroups_inherit_membership_and_encoded_paths(gl):
    gl.add_group("lab")
    gl.add_group("lab/course")
    gl.add_project("lab/course/intro")
    gl.add_member("lab", "alice", 20)
    tok = token(gl, "alice")
    project = api(gl, "/projects/lab%2Fcourse%2Fintro", tok).json()
    assert project["path_with_namespace"] == "lab/course/intro"
    assert project["namespace"]["full_path"] == "lab/course"
    assert project["permissions"]["group_access"]["access_level"] == 20
    assert api(gl, "/projects/lab%2Fcourse%2Fintro/repository/branches", tok).status_code == 200
    alice_id = api(gl, "/user", tok).json()["id"]
    inherited = api(gl, f"/groups/lab%2Fcourse/members/all/{alice_id}", tok)
    assert inherited.status_code == 200 and inherited.json()["access_level"] == 20
    assert api(gl, f"/groups/lab%2Fcourse/members/{alice_id}", tok).status_code == 404
    assert api(gl, f"/projects/{project['id']}/members/all/{alice_id}", tok).json()[
        "access_level"] == 20
    groups = api(gl, "/groups?min_access_level=20", tok).json()
    assert [g["full_path"] for g in groups] == ["lab/course", "lab"]  # by name: course, lab
    assert api(gl, "/groups/lab%2Fcourse", token(gl, "bob")).json() == {
        "message": "404 Group Not Found"}


# -- access through a group share (POST /projects/:id/share) ------------------
@pytest.fixture
def shared(gl):
    """demo/hello shared by maya with `partners` as Maintainer: pia is Maintainer of
    partners, dan its Developer; `ext/lab` shared as Reporter, eve Owner of `ext`."""
    for name in ("pia", "dan", "eve"):
        gl.add_user(name, password=f"{name}-pw")
    # internal: maya must be able to read a group to share with it
    partners = gl.add_group("partners", visibility="internal")
    gl.add_member("partners", "pia", 40)
    gl.add_member("partners", "dan", 30)
    gl.add_group("ext", visibility="internal")
    lab = gl.add_group("ext/lab", visibility="internal")
    gl.add_member("ext", "eve", 50)  # inherited by ext/lab
    url = "/projects/demo%2Fhello/share"
    maya = token(gl, "maya")
    link = api(gl, url, maya, "POST", json={"group_id": partners["id"], "group_access": 40})
    assert link.status_code == 201, link.text
    assert link.json() == {"id": link.json()["id"], "project_id": 1,
                           "group_id": partners["id"], "group_access": 40, "expires_at": None}
    assert api(gl, url, maya, "POST", data={"group_id": lab["id"],
                                            "group_access": 20}).status_code == 201
    return {"partners": partners, "lab": lab}


def test_share_refuses_like_gitlab(gl, shared):
    url = "/projects/demo%2Fhello/share"
    body = {"group_id": shared["partners"]["id"], "group_access": 30}
    maya = token(gl, "maya")
    assert api(gl, url, token(gl, "alice"), "POST", json=body).json() == {
        "message": "403 Forbidden"}  # sharing needs Maintainer
    assert api(gl, url, token(gl, "bob"), "POST", json=body).status_code == 404
    assert api(gl, url, method="POST", json=body).status_code == 401
    assert api(gl, url, maya, "POST", json={"group_id": 9}).json() == {
        "error": "group_access is missing"}
    owner = api(gl, url, maya, "POST", json={**body, "group_access": 50})
    assert owner.status_code == 400  # GitLab's API takes Guest to Maintainer only
    assert owner.json() == {"error": "group_access does not have a valid value"}
    missing = api(gl, url, maya, "POST", json={**body, "group_id": 999})
    assert missing.status_code == 404 and missing.json() == {"message": "404 Group Not Found"}
    again = api(gl, url, maya, "POST", json=body)
    assert again.status_code == 409
    assert again.json() == {"message": "Project already shared with this group"}
    demo = api(gl, "/groups/demo", maya).json()
    own = api(gl, url, maya, "POST", json={**body, "group_id": demo["id"]})
    assert own.status_code == 409 and "the group it is in" in own.json()["message"]


def test_share_gives_the_lower_of_group_role_and_group_access(gl, shared):
    levels = {}
    for user in ("pia", "dan", "eve"):
        tok = token(gl, user)
        uid = api(gl, "/user", tok).json()["id"]
        levels[user] = api(gl, f"/projects/1/members/all/{uid}", tok).json()["access_level"]
        # the direct members endpoint knows nothing of shares, as GitLab's
        assert api(gl, f"/projects/1/members/{uid}", tok).status_code == 404
        project = api(gl, "/projects/demo%2Fhello", tok).json()
        # GitLab's permissions show own and group-hierarchy membership, never a share
        assert project["permissions"] == {"project_access": None, "group_access": None}
        assert [g["group_full_path"] for g in project["shared_with_groups"]] == [
            "partners", "ext/lab"]
        mine = api(gl, "/projects?membership=true", tok).json()
        assert [p["path_with_namespace"] for p in mine] == ["demo/hello"], user
    # pia Maintainer (40 in partners, share 40); dan Developer (30, share 40);
    # eve Owner of ext, through ext/lab shared as Reporter: 20
    assert levels == {"pia": 40, "dan": 30, "eve": 20}
    for level, expected in ((40, ["pia"]), (30, ["dan", "pia"]), (20, ["dan", "eve", "pia"])):
        found = [u for u in ("dan", "eve", "pia") if api(
            gl, f"/projects?min_access_level={level}", token(gl, u)).json()]
        assert found == expected, level


def test_share_role_rules_deploy_keys_and_can_push(gl, shared):
    gl.commit("demo/hello", "topic", {"x.txt": "x"})
    keys = "/projects/demo%2Fhello/deploy_keys"
    body = {"title": "booklab", "key": new_public_key()}
    assert api(gl, keys, token(gl, "pia"), "POST", json=body).status_code == 201
    for user in ("dan", "eve"):
        assert api(gl, keys, token(gl, user), "POST", json=body).status_code == 403, user
    can_push = {}
    for user in ("pia", "dan", "eve"):
        branches = api(gl, "/projects/1/repository/branches", token(gl, user)).json()
        can_push[user] = {b["name"]: b["can_push"] for b in branches}
    assert can_push == {"pia": {"main": True, "topic": True},  # Maintainer
                        "dan": {"main": False, "topic": True},  # Developer: not protected main
                        "eve": {"main": False, "topic": False}}  # Reporter reads only


def test_share_expires_and_is_removed(gl, shared):
    tok = token(gl, "dan")
    assert api(gl, "/projects/demo%2Fhello", tok).status_code == 200
    url = f"/projects/demo%2Fhello/share/{shared['partners']['id']}"
    assert api(gl, url, token(gl, "dan"), "DELETE").status_code == 403
    gone = api(gl, url, token(gl, "maya"), "DELETE")
    assert gone.status_code == 204 and gone.content == b""
    assert api(gl, url, token(gl, "maya"), "DELETE").json() == {
        "message": "404 Group Link Not Found"}
    assert api(gl, "/projects/demo%2Fhello", tok).status_code == 404
    assert api(gl, "/projects?membership=true", tok).json() == []
    # a share is gone from the start of its expiry date (GitLab's Expirable)
    today = datetime.now(timezone.utc).date()
    gl.share_project("demo/hello", "partners", 30, expires_at=today + timedelta(days=1))
    assert api(gl, "/projects/demo%2Fhello", tok).status_code == 200
    gl.share_project("demo/hello", "partners", 30, expires_at=today)
    assert api(gl, "/projects/demo%2Fhello", tok).status_code == 404


async def test_oauthenticator_gitlab_client_against_the_double(gl):
    """oauthenticator 17.4's own calls: token exchange, /user, /version, members."""
    from oauthenticator.gitlab import GitLabOAuthenticator

    gl.add_group("lab")
    course = gl.add_group("lab/course")
    gl.add_member("lab", "gus", 10)  # inherited by lab/course
    auth = GitLabOAuthenticator(gitlab_url=gl.url, client_id=CLIENT_ID,
                                client_secret=CLIENT_SECRET, oauth_callback_url=REDIRECT,
                                scope=["api", "read_user"],
                                allowed_gitlab_groups={str(course["id"])},
                                allowed_project_ids={1})
    with pytest.raises(Exception, match="400"):
        await auth.get_token_info(None, auth.build_refresh_token_request_params("nope"))
    # gus: Guest of lab (group rule, inherited); maya, alice: Maintainer, Developer of
    # project 1 (the project rule needs Developer+); rita: Reporter only; bob: nothing.
    models = {}
    for user, allowed in (("gus", True), ("maya", True), ("alice", True), ("rita", False),
                          ("bob", False)):
        info = await auth.get_token_info(None, code_grant(code_for(gl, user)))
        models[user] = model = await auth._token_to_auth_model(info)
        assert model["name"] == user
        assert model["auth_state"]["refresh_token"] == info["refresh_token"]
        assert await auth.check_allowed(user, model) is allowed, user
    assert auth.gitlab_version == [17, 4, 0]
    # oauthenticator escapes group paths twice (jupyterhub/oauthenticator#423): GitLab then
    # finds no "lab%2Fcourse" group, and neither does the double.
    auth.allowed_gitlab_groups = {"lab/course"}
    assert await auth.check_allowed("gus", models["gus"]) is False
    gus_id = models["gus"]["auth_state"]["gitlab_user"]["id"]
    assert ("GET", f"/api/v4/groups/lab%252Fcourse/members/all/{gus_id}", 404) in gl.requests_log


# -- deploy keys --------------------------------------------------------------
def new_public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + " booklab"


def ssh_fingerprint(pub: str, tmp_path: Path, hash_name: str) -> str:
    path = tmp_path / f"key-{hash_name}.pub"
    path.write_text(pub + "\n")
    out = subprocess.run(["ssh-keygen", "-l", "-E", hash_name, "-f", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[1]


def test_deploy_keys_role_rules(gl, tmp_path):
    url = "/projects/demo%2Fhello/deploy_keys"
    pub = new_public_key()
    body = {"title": "booklab", "key": pub}
    dev = api(gl, url, token(gl, "alice"), "POST", json=body)
    assert dev.status_code == 403 and dev.json() == {"message": "403 Forbidden"}
    assert api(gl, url, token(gl, "alice")).status_code == 403
    assert api(gl, url, method="POST", json=body).status_code == 401
    assert api(gl, url, token(gl, "bob"), "POST", json=body).status_code == 404

    maya = token(gl, "maya")
    created = api(gl, url, maya, "POST", data=body)  # form-encoded works too
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["can_push"] is False and key["key"] == pub and key["expires_at"] is None
    assert "MD5:" + key["fingerprint"] == ssh_fingerprint(pub, tmp_path, "md5")
    assert key["fingerprint_sha256"] == ssh_fingerprint(pub, tmp_path, "sha256")
    assert [k["id"] for k in gl.deploy_keys("demo/hello")] == [key["id"]]
    assert f"key-{key['id']}\"" in gl.authorized_keys("/usr/bin/gitlab-double-shell")
    assert gl.deploy_key_can_read(key["id"], "demo/hello")

    dup = api(gl, url, maya, "POST", json=body)
    assert dup.status_code == 400
    assert dup.json() == {"message": {"deploy_key.fingerprint_sha256": ["has already been taken"]}}
    invalid = api(gl, url, maya, "POST", json={"title": "x", "key": "ssh-ed25519 AAAAnotbase64!"})
    assert invalid.status_code == 400 and invalid.json()["message"]["deploy_key.key"] == [
        "is invalid"]
    assert api(gl, url, maya, "POST", json={"key": pub}).json() == {"error": "title is missing"}

    listed = api(gl, url, maya).json()
    assert [k["id"] for k in listed] == [key["id"]]
    assert api(gl, f"{url}/{key['id']}", maya).json()["fingerprint"] == key["fingerprint"]
    deleted = api(gl, f"{url}/{key['id']}", maya, "DELETE")
    assert deleted.status_code == 204 and deleted.content == b""
    gone = api(gl, f"{url}/{key['id']}", maya)
    assert gone.status_code == 404 and gone.json() == {"message": "404 Deploy Key Not Found"}
    assert gl.deploy_keys("demo/hello") == []
    assert not gl.deploy_key_can_read(key["id"], "demo/hello")


# -- git over HTTP ------------------------------------------------------------
def git(*args, cwd=None, env=None):
    full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
                "HOME": str(cwd or Path.cwd()), **(env or {})}
    return subprocess.run(["git", "-c", "credential.helper=", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


def authed_url(gl, tok, user="oauth2", path="demo/hello"):
    return gl.url.replace("http://", f"http://{user}:{tok}@") + f"/{path}.git"


def test_git_clone_with_oauth_token(gl, tmp_path):
    tok = token(gl, "rita", ["read_repository"])
    done = git("clone", authed_url(gl, tok), str(tmp_path / "a"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a" / "Dockerfile").read_text() == "FROM scratch\n"

    header = "Authorization: Basic " + base64.b64encode(f"oauth2:{tok}".encode()).decode()
    done = git("-c", f"http.extraHeader={header}", "clone", f"{gl.url}/demo/hello.git",
               str(tmp_path / "b"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert tok not in (tmp_path / "b" / ".git" / "config").read_text()
    assert git("clone", authed_url(gl, tok, user="rita"), str(tmp_path / "c"),
               cwd=tmp_path).returncode == 0
    assert ("GET", "/demo/hello.git/info/refs", 200) in gl.requests_log
    assert not any(tok in path for _, path, _ in gl.requests_log)


def test_git_refuses_bad_tokens_and_hides_projects(gl, tmp_path):
    info = f"{gl.url}/demo/hello.git/info/refs?service=git-upload-pack"
    anonymous = requests.get(info, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="GitLab"'
    bad = requests.get(info, auth=("oauth2", "wrong"), timeout=10)
    assert bad.status_code == 401 and "WWW-Authenticate" in bad.headers
    expired = token(gl, "rita")
    gl.expire_token(expired)
    assert requests.get(info, auth=("oauth2", expired), timeout=10).status_code == 401
    api_only = token(gl, "rita", ["read_api"])
    assert requests.get(info, auth=("oauth2", api_only), timeout=10).status_code == 401
    assert requests.get(info, auth=("oauth2", token(gl, "bob")), timeout=10).status_code == 404
    assert requests.get(info, auth=("oauth2", token(gl, "gus")), timeout=10).status_code == 403

    failed = git("clone", authed_url(gl, "wrong"), str(tmp_path / "x"), cwd=tmp_path)
    assert failed.returncode != 0 and "Authentication failed" in failed.stderr
    hidden = git("clone", authed_url(gl, token(gl, "bob")), str(tmp_path / "y"), cwd=tmp_path)
    assert hidden.returncode != 0 and "not found" in hidden.stderr


def test_git_fetch_commit_by_sha_and_gzip_negotiation(gl, tmp_path):
    old_sha = gl.commit("demo/hello", "main", {"a.txt": "1"})
    gl.commit("demo/hello", "main", {"a.txt": "2"})
    tok = token(gl, "rita", ["read_repository"])
    repo = tmp_path / "r"
    assert git("init", "-q", str(repo), cwd=tmp_path).returncode == 0
    git("remote", "add", "origin", authed_url(gl, tok), cwd=repo)
    done = git("fetch", "--depth", "1", "origin", old_sha, cwd=repo)
    assert done.returncode == 0, done.stderr
    assert git("cat-file", "-e", f"{old_sha}^{{commit}}", cwd=repo).returncode == 0

    # Many newer local commits make git send long "have" lists, gzip-compressed.
    work = tmp_path / "w"
    assert git("clone", "-q", authed_url(gl, tok), str(work), cwd=tmp_path).returncode == 0
    head = git("rev-parse", "HEAD", cwd=work).stdout.strip()
    stream = "".join(f"commit refs/heads/main\ncommitter t <t@x> {4000000000 + i} +0000\n"
                     f"data 4\nl{i:03d}" + (f"\nfrom {head}" if i == 0 else "") + "\n"
                     for i in range(100))
    imported = subprocess.run(["git", "fast-import", "--quiet"], cwd=work, input=stream,
                              text=True, capture_output=True)
    assert imported.returncode == 0, imported.stderr
    new_sha = gl.commit("demo/hello", "main", {"b.txt": "3"})
    trace = git("fetch", "origin", cwd=work, env={"GIT_TRACE_CURL": "1",
                                                  "GIT_TRACE_CURL_NO_DATA": "1"})
    assert trace.returncode == 0, trace.stderr[-2000:]
    assert "Content-Encoding: gzip" in trace.stderr
    assert git("rev-parse", "origin/main", cwd=work).stdout.strip() == new_sha


def test_git_push_is_refused(gl, tmp_path):
    tok = token(gl, "maya", ["api"])
    work = tmp_path / "w"
    assert git("clone", "-q", authed_url(gl, tok), str(work), cwd=tmp_path).returncode == 0
    git("-c", "user.name=t", "-c", "user.email=t@x", "commit", "-q", "--allow-empty", "-m", "x",
        cwd=work)
    pushed = git("push", "origin", "HEAD:main", cwd=work)
    assert pushed.returncode != 0 and "403" in pushed.stderr
    info = f"{gl.url}/demo/hello.git/info/refs?service=git-receive-pack"
    assert requests.get(info, auth=("oauth2", tok), timeout=10).status_code == 403


# -- the rest -----------------------------------------------------------------
def test_unknown_routes_and_methods_answer_json(gl):
    missing = requests.get(f"{gl.url}/api/v4/nothing/here", timeout=10)
    assert missing.status_code == 404 and missing.json() == {"error": "404 Not Found"}
    assert requests.get(f"{gl.url}/totally/unknown", timeout=10).status_code == 404
    method = api(gl, "/user", token(gl, "alice"), "DELETE")
    assert method.status_code == 405 and method.json() == {"error": "405 Not Allowed"}


def test_session_double_and_cli_seed(gitlab_session, tmp_path):
    gitlab_session.add_user("session-user")
    assert api(gitlab_session, "/user", token(gitlab_session, "session-user")).status_code == 200

    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "Dockerfile").write_text("FROM base\n")
    seed = {"users": [{"username": "alice", "password": "alice-pw"}],
            "projects": [{"path": "demo/public", "visibility": "public", "files_dir": "files",
                          "files": {"README.md": "hi"}, "tags": {"v1": "main"}}],
            "members": [{"path": "demo", "user": "alice", "access_level": 40}]}
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.gitlab_double", "--port", "0", "--data-dir",
         str(tmp_path / "data"), "--seed", str(tmp_path / "seed.json")],
        cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("gitlab-double listening on http://127.0.0.1:")
        url = line.split()[-1]
        public = requests.get(f"{url}/api/v4/projects/demo%2Fpublic", timeout=10).json()
        assert public["visibility"] == "public"
        done = git("clone", "-q", f"{url}/demo/public.git", str(tmp_path / "c"), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "c" / "Dockerfile").read_text() == "FROM base\n"
    finally:
        proc.terminate()
        proc.wait(10)
