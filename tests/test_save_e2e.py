"""Save to GitLab on the real stack: GitLab double -> hub -> Redis -> runner -> Docker ->
the notebook, then the hub reads the notebook's files and commits the changes with the
user's own GitLab token. The double's repository must hold exactly the changed files."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest
import requests

from tests.conftest_stack import notebook
from tests.test_e2e import wait_for_server

pytestmark = [pytest.mark.docker, pytest.mark.slow]
SAVE = "/hub/booklab/api/save/hello"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary"


def contents(hub, token, method, path, **body):
    r = requests.request(method, hub.proxied(f"/user/alice/hello/api/contents/{path}"),
                         headers={"Authorization": f"token {token}"}, json=body or None,
                         timeout=30)
    assert r.status_code in (200, 201, 204), r.text[:300]
    return r


def save(hub, token, **body):
    return requests.post(hub.url + SAVE, headers={"Authorization": f"token {token}"},
                         json=body, timeout=120)


def preview(hub, token):
    return requests.get(hub.url + SAVE, headers={"Authorization": f"token {token}"},
                        timeout=120)


def container_of(docker_client, runner):
    found = docker_client.containers.list(
        filters={"label": f"org.booklab.runner={runner.runner_id}"})
    assert len(found) == 1
    return found[0]


def test_save_commits_exactly_the_changed_files(hub, runner, docker_client, demo_gitlab):
    gl = demo_gitlab
    gl.add_user("admin", password="admin-pw", name="Admin")  # a hub admin (hub.admin_users)
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    r = hub.api("POST", "/users/alice/servers/hello", token=token,
                json={"user_options": {"project": "demo/hello", "ref": "main"}})
    assert r.status_code in (201, 202), r.text
    wait_for_server(hub, "alice", "hello", token)
    tokens_before = {t["id"] for t in hub.api("GET", "/users/alice/tokens").json()["api_tokens"]}

    # nothing changed yet
    r = preview(hub, token)
    assert r.status_code == 200, r.text
    assert r.json()["files"] == [] and r.json()["sha"] == gl.demo_sha
    assert r.json()["branch"] == "booklab/alice/hello"

    # JupyterLab's calls: edit the notebook, add a binary file, delete the README
    edited = json.loads(notebook("# Edited in Booklab"))
    contents(hub, token, "PUT", "hello.ipynb", type="notebook", format="json", content=edited)
    contents(hub, token, "PUT", "data", type="directory")
    contents(hub, token, "PUT", "data/logo.png", type="file", format="base64",
             content=base64.b64encode(PNG).decode())
    contents(hub, token, "DELETE", "README.md")

    r = preview(hub, token)
    assert r.status_code == 200, r.text
    assert [(f["action"], f["path"]) for f in r.json()["files"]] == [
        ("create", "data/logo.png"), ("update", "hello.ipynb"), ("delete", "README.md")]

    r = save(hub, token, message="My analysis")
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["branch"] == "booklab/alice/hello" and result["new_branch"] is True
    assert result["conflict"] is False
    sha = result["commit"]
    assert gl.head("demo/hello", "booklab/alice/hello") == sha
    assert gl.head("demo/hello", "main") == gl.demo_sha  # untouched
    assert result["commit_url"] == f"{gl.url}/demo/hello/-/commit/{sha}"
    assert result["branch_url"] == f"{gl.url}/demo/hello/-/tree/booklab/alice/hello"
    assert gl.changed_paths("demo/hello", sha) == [
        ("D", "README.md"), ("A", "data/logo.png"), ("M", "hello.ipynb")]
    files = gl.files_at("demo/hello", sha)
    assert files["data/logo.png"] == PNG
    saved = json.loads(files["hello.ipynb"])  # still a valid notebook, with the edit
    assert saved["cells"][0]["source"] in ("# Edited in Booklab", ["# Edited in Booklab"])
    parent = gl.store.project_by_path("demo/hello")
    log = gl.requests_log
    assert ("POST", "/api/v4/projects/1/repository/commits", 201) in log, parent

    # the server-scoped token lived only as long as the save
    after = {t["id"] for t in hub.api("GET", "/users/alice/tokens").json()["api_tokens"]}
    assert after == tokens_before

    # saving again without a change commits nothing
    r = save(hub, token)
    assert r.status_code == 200 and r.json()["commit"] == sha and r.json()["files"] == []
    assert gl.head("demo/hello", "booklab/alice/hello") == sha

    # one more change goes on top of the first save, with only that file
    contents(hub, token, "PUT", "notes.md", type="file", format="text", content="more\n")
    r = save(hub, token, message="More")
    assert r.status_code == 200, r.text
    second = r.json()["commit"]
    assert r.json()["new_branch"] is False and r.json()["conflict"] is False
    assert gl.changed_paths("demo/hello", second) == [("A", "notes.md")]

    # someone else changes the same file on the branch: a new branch, and we are told
    gl.commit("demo/hello", "booklab/alice/hello", {"notes.md": "theirs\n"})
    contents(hub, token, "PUT", "notes.md", type="file", format="text", content="mine\n")
    r = save(hub, token)
    assert r.status_code == 200, r.text
    moved = r.json()
    assert moved["conflict"] is True and moved["new_branch"] is True
    assert moved["branch"].startswith("booklab/alice/hello-")
    assert "changed since this server started" in moved["message"]
    assert gl.files_at("demo/hello", moved["commit"])["notes.md"] == b"mine\n"
    assert gl.files_at("demo/hello", "booklab/alice/hello")["notes.md"] == b"theirs\n"

    # a name in the container that no repository path may have: refused, nothing saved
    container = container_of(docker_client, runner)
    code, out = container.exec_run(["sh", "-c", "printf x > \"$(printf 'bad\\001name')\""])
    assert code == 0, out
    heads = {b: gl.head("demo/hello", b) for b in ("main", "booklab/alice/hello")}
    r = save(hub, token, branch="other")
    assert r.status_code == 400, r.text
    assert "control character" in r.json()["error"]
    assert gl.head("demo/hello", "other") is None
    assert {b: gl.head("demo/hello", b) for b in heads} == heads
    container.exec_run(["sh", "-c", "rm -f \"$(printf 'bad\\001name')\""])

    # a token with the notebook's own scopes (code in the container holds one) may not
    # save: it can reach the server, not manage it
    r = hub.api("POST", "/users/alice/tokens", json={
        "note": "like the notebook's", "expires_in": 600,
        "scopes": ["access:servers!server=alice/hello", "users:activity!user=alice"]})
    assert r.status_code == 201, r.text
    inside = r.json()["token"]
    assert requests.get(hub.proxied("/user/alice/hello/api/contents"), timeout=30,
                        headers={"Authorization": f"token {inside}"}).status_code == 200
    r = save(hub, inside, branch="from-inside")
    assert r.status_code == 403, r.text
    assert "needs the 'servers' scope" in r.json()["error"]
    assert gl.head("demo/hello", "from-inside") is None

    # bob cannot save (or even see) alice's server
    hub.login("bob", "bob-pw")
    bob = hub.user_token("bob")
    assert save(hub, bob).status_code == 404
    assert preview(hub, bob).status_code == 404
    r = requests.post(hub.url + "/hub/booklab/api/save/../alice/hello",
                      headers={"Authorization": f"token {bob}"}, json={}, timeout=30)
    assert r.status_code in (403, 404)
    assert {b: gl.head("demo/hello", b) for b in heads} == heads

    # nor can an admin: the commit would be made with alice's GitLab token
    hub.login("admin", "admin-pw")
    admin = hub.user_token("admin")
    assert hub.api("GET", "/users/alice", token=admin).status_code == 200  # an admin indeed
    assert save(hub, admin).status_code == 404
    assert preview(hub, admin).status_code == 404
    assert {b: gl.head("demo/hello", b) for b in heads} == heads

    # a hostile branch name is refused before anything is read or written
    r = save(hub, token, branch="--upload-pack=x")
    assert r.status_code == 400, r.text

    # alice is now only a Reporter: GitLab refuses, and she is told so clearly
    gl.add_member("demo/hello", "alice", 20)
    r = save(hub, token, branch="as-reporter")
    assert r.status_code == 403, r.text
    assert "GitLab refused the save" in r.json()["error"]
    assert "You are not allowed to push into this branch" in r.json()["error"]
    assert gl.head("demo/hello", "as-reporter") is None
    after = {t["id"] for t in hub.api("GET", "/users/alice/tokens").json()["api_tokens"]
             if t.get("note") != "like the notebook's"}
    assert after == tokens_before  # deleted after a refused save too

    # she can still download her changes, as a zip
    r = requests.get(hub.url + SAVE.replace("/api/save/", "/save/") + "/changes.zip",
                     headers={"Authorization": f"token {token}"}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == ["DELETED.txt", "data/logo.png", "hello.ipynb",
                                         "notes.md"]
        assert zf.read("data/logo.png") == PNG and zf.read("notes.md") == b"mine\n"
        assert zf.read("DELETED.txt") == b"README.md\n"
    r = requests.get(hub.url + "/hub/booklab/save/hello/changes.zip",
                     headers={"Authorization": f"token {bob}"}, timeout=60)
    assert r.status_code == 404
