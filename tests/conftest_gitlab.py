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
