"""Fixtures for the GitLab test double (see tests/gitlab_double)."""

from __future__ import annotations

import pytest

from tests.gitlab_double import GitLabDouble


@pytest.fixture
def gitlab(tmp_path):
    """A fresh, empty GitLab double for one test, serving on 127.0.0.1."""
    gl = GitLabDouble(tmp_path / "gitlab")
    gl.start()
    yield gl
    gl.stop()


@pytest.fixture(scope="session")
def gitlab_session(tmp_path_factory):
    """One GitLab double shared by the whole session: use unique names in it."""
    gl = GitLabDouble(tmp_path_factory.mktemp("gitlab"))
    gl.start()
    yield gl
    gl.stop()


@pytest.fixture
def role_gitlab(gitlab):
    """alice Developer, maya Maintainer, rita Reporter, gus Guest, bob nothing, on
    demo/hello: one user per role rule of the double."""
    for name in ("alice", "maya", "rita", "gus", "bob"):
        gitlab.add_user(name, password=f"{name}-pw", name=name.title())
    gitlab.add_project("demo/hello", files={"Dockerfile": "FROM scratch\n", "README.md": "hi\n"})
    for name, level in (("alice", 30), ("maya", 40), ("rita", 20), ("gus", 10)):
        gitlab.add_member("demo/hello", name, level)
    return gitlab
