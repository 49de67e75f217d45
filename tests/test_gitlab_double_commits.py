"""The double's commits API, branch creation and tree as GitLab answers them: role and
protected-branch rules, GitLab's 400s, and commits that land in the real repository."""

from __future__ import annotations

import base64
import hashlib
import subprocess

import pytest

from tests.gitlab_double import NO_ONE
from tests.test_gitlab_double import api, token

PNG = b"\x89PNG\r\n\x1a\n\x00\x00binary\xff\xfe"


@pytest.fixture
def gl(role_gitlab):
    return role_gitlab


def commit(gl, user, actions, branch="work", **extra):
    body = {"branch": branch, "commit_message": "Save", "actions": actions, **extra}
    return api(gl, "/projects/demo%2Fhello/repository/commits", token(gl, user), "POST",
               json=body)


def test_developer_commits_create_update_delete_move_to_a_new_branch(gl):
    main = gl.head("demo/hello", "main")
    r = commit(gl, "alice", [
        {"action": "create", "file_path": "notes/new.md", "content": "new\n"},
        {"action": "create", "file_path": "logo.png", "encoding": "base64",
         "content": base64.b64encode(PNG).decode()},
        {"action": "update", "file_path": "README.md", "content": "changed\n"},
        {"action": "move", "file_path": "docker/Dockerfile", "previous_path": "Dockerfile"},
    ], start_sha=main)
    assert r.status_code == 201, r.text
    data = r.json()
    assert data["parent_ids"] == [main] and data["title"] == "Save"
    assert data["author_name"] == "Alice" and data["project_id"] == 1
    assert gl.head("demo/hello", "work") == data["id"]
    assert gl.head("demo/hello", "main") == main  # untouched
    files = gl.files_at("demo/hello", "work")
    assert files == {"notes/new.md": b"new\n", "logo.png": PNG, "README.md": b"changed\n",
                     "docker/Dockerfile": b"FROM scratch\n"}
    assert gl.changed_paths("demo/hello", data["id"]) == [
        ("D", "Dockerfile"), ("M", "README.md"), ("A", "docker/Dockerfile"),
        ("A", "logo.png"), ("A", "notes/new.md")]
    r = commit(gl, "alice", [{"action": "delete", "file_path": "logo.png"}])
    assert r.status_code == 201, r.text
    assert r.json()["parent_ids"] == [data["id"]]
    assert "logo.png" not in gl.files_at("demo/hello", "work")


@pytest.mark.parametrize("action,message", [
    ({"action": "create", "file_path": "README.md", "content": "x"},
     "A file with this name already exists"),
    ({"action": "update", "file_path": "nope.md", "content": "x"},
     "A file with this name doesn't exist"),
    ({"action": "delete", "file_path": "nope.md"}, "A file with this name doesn't exist"),
    ({"action": "move", "file_path": "b.md", "previous_path": "nope.md"},
     "A file with this name doesn't exist"),
])
def test_create_of_existing_and_change_of_missing_files_are_400(gl, action, message):
    r = commit(gl, "alice", [action], start_branch="main")
    assert r.status_code == 400, r.text
    assert r.json() == {"message": message}
    assert gl.head("demo/hello", "work") is None  # nothing written


def test_role_and_protected_branch_rules(gl):
    change = [{"action": "update", "file_path": "README.md", "content": "x"}]
    refused = {"message": "403 Forbidden - You are not allowed to push into this branch"}
    r = commit(gl, "rita", change, start_branch="main")  # Reporter
    assert (r.status_code, r.json()) == (403, refused)
    r = commit(gl, "gus", change, start_branch="main")  # Guest: cannot even read the code
    assert r.status_code == 403
    r = commit(gl, "bob", change, start_branch="main")  # no access to a private project
    assert r.status_code == 404
    # the default branch is protected: Developers may not push, Maintainers may
    assert commit(gl, "alice", change, branch="main").status_code == 403
    assert commit(gl, "maya", change, branch="main").status_code == 201
    gl.protect_branch("demo/hello", "release", NO_ONE)
    r = commit(gl, "maya", change, branch="release", start_branch="main")
    assert (r.status_code, r.json()) == (403, refused)
    assert gl.head("demo/hello", "release") is None
    assert [c for c in gl.changed_paths("demo/hello", "main")] == [("M", "README.md")]


def test_start_point_rules_like_gitlab(gl):
    main = gl.head("demo/hello", "main")
    change = [{"action": "create", "file_path": "a.txt", "content": "a"}]
    r = commit(gl, "alice", change, start_branch="main", start_sha=main)
    assert r.status_code == 400 and "mutually exclusive" in r.json()["error"]
    r = commit(gl, "alice", change)  # no branch "work" and no start point
    assert r.json() == {"message": "You can only create or edit files when you are on a "
                                   "branch"}
    first = commit(gl, "alice", change, start_sha=main).json()["id"]
    # "work" exists now: starting it anew from another commit is refused ...
    r = commit(gl, "alice", [{"action": "create", "file_path": "b.txt", "content": "b"}],
               start_sha=main)
    assert r.status_code == 400, r.text
    assert r.json() == {"message": "A branch called 'work' already exists. Switch to that "
                                   "branch in order to make changes"}
    # ... from its own head it is a commit on top
    r = commit(gl, "alice", [{"action": "create", "file_path": "b.txt", "content": "b"}],
               start_sha=first)
    assert r.status_code == 201 and r.json()["parent_ids"] == [first]


@pytest.mark.parametrize("path", ["../x", "a/../../x", ".git/config", "a\x00b", "x" * 5000,
                                  "./x"])
def test_hostile_paths_are_refused(gl, path):
    r = commit(gl, "alice", [{"action": "create", "file_path": path, "content": "x"}],
               start_branch="main")
    assert r.status_code == 400, r.text
    assert gl.head("demo/hello", "work") is None


def test_missing_parameters_and_bad_actions(gl):
    r = api(gl, "/projects/demo%2Fhello/repository/commits", token(gl, "alice"), "POST",
            json={})
    assert r.json() == {"error": "branch is missing, commit_message is missing, "
                                 "actions is missing"}
    r = commit(gl, "alice", [{"action": "explode", "file_path": "a"}], start_branch="main")
    assert r.json() == {"error": "actions[0][action] does not have a valid value"}
    r = commit(gl, "alice", [{"action": "create", "file_path": "a", "encoding": "base64",
                              "content": "%%%"}], start_branch="main")
    assert r.status_code == 400


def test_create_branch_and_get_it(gl):
    main = gl.head("demo/hello", "main")
    url = "/projects/demo%2Fhello/repository/branches"
    r = api(gl, url, token(gl, "rita"), "POST", json={"branch": "x", "ref": "main"})
    assert r.status_code == 403
    r = api(gl, url, token(gl, "alice"), "POST", json={"branch": "booklab/alice/s", "ref": main})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "booklab/alice/s" and r.json()["commit"]["id"] == main
    assert r.json()["can_push"] is True and r.json()["protected"] is False
    r = api(gl, url, token(gl, "alice"), "POST", json={"branch": "booklab/alice/s", "ref": main})
    assert (r.status_code, r.json()) == (400, {"message": "Branch already exists"})
    r = api(gl, url, token(gl, "alice"), "POST", json={"branch": "y", "ref": "nope"})
    assert (r.status_code, r.json()) == (400, {"message": "Invalid reference name: nope"})
    r = api(gl, f"{url}/booklab%2Falice%2Fs", token(gl, "alice"))
    assert r.status_code == 200 and r.json()["commit"]["id"] == main
    assert api(gl, url, token(gl, "alice")).status_code == 200  # the listing still answers


def test_tree_gives_git_blob_shas(gl):
    gl.commit("demo/hello", "main", {"sub/dir/f.txt": "deep\n"})
    r = api(gl, "/projects/demo%2Fhello/repository/tree", token(gl, "alice"),
            params={"ref": "main", "recursive": "true", "per_page": 100})
    assert r.status_code == 200 and r.headers["X-Total"] == "5"
    rows = {e["path"]: e for e in r.json()}
    assert rows["sub"]["type"] == "tree" and rows["sub/dir/f.txt"]["type"] == "blob"
    blob = b"blob %d\x00deep\n" % len(b"deep\n")
    assert rows["sub/dir/f.txt"]["id"] == hashlib.sha1(blob).hexdigest()
    assert rows["sub/dir/f.txt"]["mode"] == "100644"
    r = api(gl, "/projects/demo%2Fhello/repository/tree", token(gl, "alice"),
            params={"ref": "nope"})
    assert (r.status_code, r.json()) == (404, {"message": "404 Tree Not Found"})


def test_a_commit_is_cloneable(gl, tmp_path):
    commit(gl, "alice", [{"action": "create", "file_path": "n.ipynb", "content": "{}"}],
           start_branch="main")
    repo = gl.store.project_by_path("demo/hello").repo_dir
    out = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--branch", "work", str(repo), str(out)], check=True)
    assert (out / "n.ipynb").read_text() == "{}"
