"""Input validation at the edge: hostile refs and paths are refused with a clear message."""

import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from booklab_spawner import validate as check
from booklab_spawner.exceptions import InvalidInput
from tests.hostile_inputs import (
    FAST,
    SERVER_BASE,
    WhatwgURL,
    assert_safe_project,
    assert_safe_ref,
    assert_safe_server_path,
    hostile_text,
)


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


# -- invisible characters, encodings, paths inside the server ------------------------
INVISIBLE = ["\u202e", "\u200b", "\u0085", "\u2028", "\u2029", "\ufeff", "\u00ad", "\ufffe",
             "\ufdd0", "\ue000", "\u00a0", "\ud800", "\x1b", "\u061c", "\U000e0001"]


@pytest.mark.parametrize("char", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
def test_refs_with_invisible_characters_are_refused_by_code_point(char):
    with pytest.raises(InvalidInput) as exc:
        check.ref(f"ma{char}in")
    message = str(exc.value)
    assert f"U+{ord(char):04X}" in message and char not in message
    message.encode("utf-8")  # a lone surrogate in a message would fail the response


def test_every_ref_the_validator_takes_is_a_display_name_jupyterhub_takes():
    """The 500 of the launch link: JupyterHub refuses a display name we let through."""
    from jupyterhub.slugs import is_valid_display_name

    for char in INVISIBLE:
        assert not is_valid_display_name(f"demo/hello@ma{char}in")  # so we must refuse


@pytest.mark.parametrize("ref", [
    "a%2e%2eb", "%2d-upload-pack=x", "%252d-upload-pack=x", "ma%E2%80%AEin", "x%00y",
    "x%0Ay", "%2e%2e%2fetc", "x%20y", "%25252525252e",
])
def test_percent_encoded_forms_of_bad_refs_are_refused(ref):
    with pytest.raises(InvalidInput):
        check.ref(ref)


@pytest.mark.parametrize("ref", ["100%", "50%-off", "fix/%zz", "é-branch", "日本語", "v1.0+build"])
def test_refs_with_percent_or_non_ascii_letters_still_pass(ref):
    assert check.ref(ref) == ref


GOOD_SERVER_PATHS = {
    "lab/tree/hello.ipynb": "lab/tree/hello.ipynb",
    "/lab/tree/hello.ipynb": "lab/tree/hello.ipynb",
    "lab/tree/my notebook.ipynb": "lab/tree/my notebook.ipynb",
    "lab/tree/caf%C3%A9.ipynb": "lab/tree/caf%C3%A9.ipynb",
    "voila/render/x.ipynb?voila-theme=dark#top": "voila/render/x.ipynb?voila-theme=dark#top",
    "lab?reset=..": "lab?reset=..",  # '..' in the query is no path segment
    "lab/tree/./x": "lab/tree/./x",
    "": "",
}

# each would leave /user/<name>/<server>/ (or the hub) in a browser
ESCAPING_SERVER_PATHS = [
    "%2e%2e/%2e%2e/hub/admin", "%2E%2E/x", ".%2e/x", "%2e./x", "lab/%2e%2e/%2e%2e/%2e%2e/hub",
    "lab/../..", "../x", "lab/tree/../../../hub/token",
]
HOSTILE_SERVER_PATHS = ESCAPING_SERVER_PATHS + [
    "%252e%252e/x", "%25252e%25252e/x", "..%2fhub", "lab%2f..%2f..%2fhub", "lab%3f/../x",
    "//evil.example/x", "///evil.example", "/%2fevil.example", "%2f%2fevil.example",
    "\\\\evil.example", "lab\\..\\x", "lab%5c..%5cx", "javascript:alert(1)",
    "JavaScript%3Aalert(1)", "http://evil.example/", "data:text/html,x", "lab/\u202etxt.ipynb",
    "lab/\x00", "lab/\nx", "lab/%0ax", "lab/\tx", "lab/%E2%80%8B", "x" * 2001,
    "%2525252525252e",
]


@pytest.mark.parametrize("path,expected", GOOD_SERVER_PATHS.items())
def test_server_paths_inside_the_server_are_kept(path, expected):
    assert check.server_path(path) == expected


@pytest.mark.parametrize("path", HOSTILE_SERVER_PATHS)
def test_server_paths_that_leave_the_server_are_refused(path):
    with pytest.raises(InvalidInput) as exc:
        check.server_path(path)
    assert str(exc.value).startswith("The path to open in the server")


@pytest.fixture(scope="module")
def whatwg():
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        pytest.fail("node is missing: run scripts/setup-system.sh (it installs nodejs)")
    url = WhatwgURL(node)
    yield url
    url.close()


def test_refused_paths_really_escape_in_a_browser_and_accepted_ones_do_not(whatwg):
    """Node's URL (the WHATWG standard browsers follow) reads %2e%2e as '..': these
    paths left the server before; what the validator keeps stays inside."""
    for path in ESCAPING_SERVER_PATHS:
        assert not whatwg.resolve(SERVER_BASE, path).startswith(SERVER_BASE), path
    for path in GOOD_SERVER_PATHS.values():
        assert whatwg.resolve(SERVER_BASE, path).startswith(SERVER_BASE), path


# -- properties (hypothesis) -----------------------------------------------------------
@FAST
@given(hostile_text())
def test_property_accepted_refs_are_safe(value):
    try:
        accepted = check.ref(value)
    except InvalidInput as e:
        str(e).encode("utf-8")  # the message can always be sent
        return
    assert accepted == value
    assert_safe_ref(accepted)


@FAST
@given(st.lists(st.one_of(hostile_text(4), st.sampled_from(["demo", "hello", "a-b", "x.y"])),
                max_size=6).map("/".join))
def test_property_accepted_project_paths_are_safe(value):
    try:
        accepted = check.project_path(value)
    except InvalidInput as e:
        str(e).encode("utf-8")
        return
    assert_safe_project(value, accepted)


@FAST
@given(hostile_text(16))
def test_property_accepted_server_paths_stay_inside_the_server(whatwg, value):
    try:
        accepted = check.server_path(value)
    except InvalidInput as e:
        str(e).encode("utf-8")
        return
    assert_safe_server_path(accepted)
    assert whatwg.resolve(SERVER_BASE, accepted).startswith(SERVER_BASE), accepted


@FAST
@given(st.text(alphabet=st.characters(codec=None), max_size=300))
def test_property_no_input_crashes_a_validator(value):
    for validator in (check.ref, check.project_path, check.server_path):
        try:
            validator(value)
        except InvalidInput:
            pass
