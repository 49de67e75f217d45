"""Input validation at the edge: hostile refs and paths are refused with a clear message."""

import pytest

from booklab_spawner import validate as check
from booklab_spawner.exceptions import InvalidInput


@pytest.mark.parametrize("path", ["demo/hello", "a/b/c/d", "Group_1/my.project", "x/y-z"])
def test_good_project_paths(path):
    assert check.project_path(path) == path


def test_project_path_slashes_are_normalised():
    assert check.project_path("/demo/hello/") == "demo/hello"


@pytest.mark.parametrize("path", [
    "", "hello", "demo/../etc", "demo/hello.git", "demo/-x", "demo/he llo", "demo/hello\x00",
    "demo/hello;rm", "demo/$(id)", "a/" * 30 + "b", "demo/" + "x" * 2000, None, 42,
    "demo/.hidden", "demo//x",
])
def test_bad_project_paths(path):
    with pytest.raises(InvalidInput):
        check.project_path(path)


@pytest.mark.parametrize("ref", ["main", "feature/x", "v1.0.0", "release-2024", "a" * 40,
                                 "HEAD", "deadbeef"])
def test_good_refs(ref):
    assert check.ref(ref) == ref


@pytest.mark.parametrize("ref", [
    "--upload-pack=touch /tmp/pwned", "-x", "a..b", "../../etc/passwd", "x\x00y", "a b",
    "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b", "x.lock", "x/", "/x", ".x", "x/.y",
    "@", "a@{1}", "x" * 300, "", None, "line\nbreak",
])
def test_hostile_refs_are_refused(ref):
    with pytest.raises(InvalidInput) as exc:
        check.ref(ref)
    assert "\x00" not in str(exc.value) and "\n" not in str(exc.value)


def test_commit_sha_must_be_full_hex():
    assert check.commit_sha("a" * 40) == "a" * 40
    for bad in ("a" * 39, "g" * 40, "A" * 40, None):
        with pytest.raises(InvalidInput):
            check.commit_sha(bad)
