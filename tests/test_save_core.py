"""Save to GitLab, the parts that decide what is committed: path checks, blob shas,
the diff against the launched tree, and a branch that moved since the launch. A
notebook server that lies is a real HTTP server here (the hostile party), read through
the same client code the hub uses."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess

import pytest
from tornado.web import Application, RequestHandler

from booklab_hub.save import (
    Limits,
    SaveError,
    ServerFiles,
    UnsafePath,
    actions,
    blob_sha,
    checked_branch,
    checked_path,
    confirm_deletions,
    diff,
    rebase,
    server_snapshot,
)
from tests.gitlab_double.app import ServerThread


@pytest.mark.parametrize("path", [
    "../etc/passwd", "a/../../b", "/etc/passwd", ".git/config", "sub/.git/hooks/x",
    "a\x00b", "a\nb", "a//b", "./a", "a/", "x" * 2000, "a\\b", "", ".GIT/config",
])
def test_hostile_paths_are_refused(path):
    with pytest.raises(UnsafePath):
        checked_path(path)


@pytest.mark.parametrize("path", ["a.ipynb", "sub/dir/ü.txt", "with space.md", ".hidden"])
def test_ordinary_paths_pass(path):
    assert checked_path(path) == path


@pytest.mark.parametrize("name", ["--upload-pack=x", "a..b", "HEAD", "a b", "x" * 300, ""])
def test_bad_branch_names(name):
    with pytest.raises(SaveError):
        checked_branch(name)


def test_blob_sha_is_gits(tmp_path):
    data = b"\x00\xffbinary\nand text"
    (tmp_path / "f").write_bytes(data)
    out = subprocess.run(["git", "hash-object", str(tmp_path / "f")], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert blob_sha(data) == out


def tree(**files: bytes) -> dict:
    return {p.replace("__", "/"): ("100644", blob_sha(d)) for p, d in files.items()}


def test_diff_finds_created_updated_deleted_and_leaves_links_and_hidden_alone():
    launched = tree(a=b"1", b=b"2", gone=b"3")
    launched["link"] = ("120000", blob_sha(b"target"))
    launched[".binder/env"] = ("100644", blob_sha(b"hidden"))
    server = {"a": b"1", "b": b"changed", "new": b"\xff\x00", "link": b"content"}
    plan = diff(server, launched)
    assert [(c.action, c.path) for c in plan.changes] == [
        ("update", "b"), ("create", "new"), ("delete", "gone")]
    assert plan.skipped == ["link"]
    acts = actions(plan)
    assert acts[0] == {"action": "update", "file_path": "b", "content": "changed",
                       "encoding": "text"}
    assert acts[1]["encoding"] == "base64" and base64.b64decode(acts[1]["content"]) == b"\xff\x00"
    assert acts[2] == {"action": "delete", "file_path": "gone"}


def test_moved_branch_commit_on_top_keeps_the_branchs_own_changes():
    launched = tree(a=b"1", b=b"2", c=b"3")
    head = tree(a=b"1", b=b"2", c=b"theirs", d=b"theirs too")
    server = {"a": b"mine", "b": b"2", "c": b"3"}  # the user changed only a
    plan = rebase(server, launched, head)
    assert [(c.action, c.path) for c in plan.changes] == [("update", "a")]


def test_moved_branch_with_the_same_file_changed_is_a_conflict():
    launched = tree(a=b"1")
    assert rebase({"a": b"mine"}, launched, tree(a=b"theirs")) is None
    # the same change on both sides is no conflict, and nothing is left to commit
    assert rebase({"a": b"same"}, launched, tree(a=b"same")).changes == []
    # deleted by both
    assert rebase({}, launched, {}).changes == []


# -- a notebook server that lies ------------------------------------------------------
class Lying(RequestHandler):
    def get(self, path: str) -> None:
        answer = self.settings["answers"].get(path)
        if answer is None:
            self.set_status(404)
            return self.finish("{}")
        self.set_header("Content-Type", "application/json")
        self.finish(answer if isinstance(answer, bytes) else json.dumps(answer))


def listing(*entries):
    return {"type": "directory", "content": [
        {"path": p, "type": t, "size": s} for p, t, s in entries]}


def file_model(data: bytes):
    return {"type": "file", "format": "base64", "content": base64.b64encode(data).decode()}


@pytest.fixture
def lying_server():
    answers: dict = {}
    server = ServerThread(lambda: Application([(r"/api/contents/?(.*)", Lying)],
                                              answers=answers))
    server.start()
    yield f"http://127.0.0.1:{server.port}", answers
    server.stop()


LIMITS = Limits(file_size=1000, total_size=3000, files=10)


def snapshot(url, limits=LIMITS):
    return asyncio.run(server_snapshot(ServerFiles(url, "tok", limits)))


def test_an_honest_server_is_read(lying_server):
    url, answers = lying_server
    answers[""] = listing(("a.txt", "file", 2), ("sub", "directory", None),
                          (".hidden", "file", 1))
    answers["sub"] = listing(("sub/n.ipynb", "notebook", 2))
    answers["a.txt"] = file_model(b"hi")
    answers["sub/n.ipynb"] = file_model(b"{}")
    assert snapshot(url) == {"a.txt": b"hi", "sub/n.ipynb": b"{}"}


@pytest.mark.parametrize("entries,subs,expect", [
    ([("../../etc/passwd", "file", 1)], {}, "outside the repository"),
    ([("/etc/passwd", "file", 1)], {}, "absolute path"),
    ([(".git/config", "file", 1)], {}, "inside .git"),
    ([("a\x00b", "file", 1)], {}, "control character"),
    ([("sub", "directory", None)], {"sub": listing(("elsewhere/x", "file", 1))},
     "listed \"elsewhere/x\" in \"sub\""),
    ([("x", "symlink", 1)], {}, "as 'symlink'"),
    ([(f"f{i}", "file", 1) for i in range(11)], {}, "more than 10 files"),
    ([("big", "file", 5000)], {}, "larger than the save limit (1000 bytes)"),
])
def test_a_lying_server_is_refused(lying_server, entries, subs, expect):
    url, answers = lying_server
    answers[""] = listing(*entries)
    answers.update(subs)
    for path, _, _ in entries:
        answers.setdefault(path, file_model(b"x"))
    with pytest.raises(SaveError) as e:
        snapshot(url)
    assert expect in str(e.value)


def test_a_server_that_sends_more_than_it_said_is_cut_off(lying_server):
    url, answers = lying_server
    answers[""] = listing(("small", "file", 1))
    answers["small"] = file_model(b"x" * 100_000)  # claims 1 byte
    with pytest.raises(SaveError, match="larger than the save limit"):
        snapshot(url)


def test_total_size_limit(lying_server):
    url, answers = lying_server
    answers[""] = listing(*[(f"f{i}", "file", 900) for i in range(5)])
    for i in range(5):
        answers[f"f{i}"] = file_model(b"y" * 900)
    with pytest.raises(SaveError, match="3000 bytes in all"):
        snapshot(url)


def test_a_notebook_that_is_not_json_is_refused(lying_server):
    url, answers = lying_server
    answers[""] = listing(("n.ipynb", "notebook", 3))
    answers["n.ipynb"] = file_model(b"{no")
    with pytest.raises(SaveError, match="not valid notebook JSON"):
        snapshot(url)


def test_a_file_the_listing_hides_is_not_deleted(lying_server):
    """Jupyter's hide_globs (*.pyc, __pycache__, *~) leave files out of listings that a
    direct GET still finds: such a file in git must not become a deletion."""
    url, answers = lying_server
    answers[""] = listing(("a.txt", "file", 1))
    answers["a.txt"] = file_model(b"a")
    answers["cache.pyc"] = {"type": "file", "content": None}  # GET finds it
    files = ServerFiles(url, "tok", LIMITS)
    server = asyncio.run(server_snapshot(files))
    launched = tree(**{"a.txt": b"a", "cache.pyc": b"\x00", "gone.txt": b"g"})
    plan = asyncio.run(confirm_deletions(files, diff(server, launched)))
    assert [(c.action, c.path) for c in plan.changes] == [("delete", "gone.txt")]
    assert plan.skipped == ["cache.pyc"]
