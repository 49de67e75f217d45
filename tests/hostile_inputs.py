"""Hostile input for property-based tests (hypothesis), and what must hold of anything
Booklab's validators accept. Shared by tests/test_validate.py (the validators alone)
and tests/test_hostile_requests.py (the same input through the real hub)."""

from __future__ import annotations

import json
import subprocess
import unicodedata
from urllib.parse import unquote, urljoin

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from booklab_spawner import validate as check

# no example database: a test run leaves the work tree clean
FAST = settings(max_examples=400, deadline=None, database=None)
# through the real hub: every example is an HTTP request (CI has a time budget)
HUB = settings(max_examples=100, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# what attackers put in paths and refs, plain and encoded
TOKENS = [
    "..", ".", "/", "//", "\\", "-", "--upload-pack=", "@{", "@", ".lock", ":", "~", "^",
    "%2e", "%2E", "%2e%2e", ".%2e", "%2E.", "%252e%252e", "%25252e", "%2f", "%2F", "%5c",
    "%00", "%0a", "%2d", "%E2%80%AE", "%ED%A0%80", "%", "?", "#", "javascript:",
    "http://evil.example/", "//evil.example", "\x00", "\n", "\r", "\t", " ", "\x7f",
    "\u202e", "\u200b", "\u0085", "\u2028", "\u2029", "\ufeff", "\u00ad", "\u00a0",
    "\ufffe", "\uffff", "\ufdd0", "\ue000", "\ud800", "\udfff", "\U0010ffff",
    "main", "demo", "hello", "lab", "tree", "x.ipynb", "a" * 300,
]

ANY_CHAR = st.characters(codec=None)  # every code point, surrogates included
SURROGATE = st.characters(categories=["Cs"])
# what JupyterHub would refuse in a display name: controls, formats, separators, ...
INVISIBLE_CHAR = st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs", "Co", "Cn"])

# Categories JupyterHub accepts in a display name (jupyterhub.slugs): what we may show.
VISIBLE = {"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No",
           "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So"}


def hostile_text(max_parts: int = 12) -> st.SearchStrategy[str]:
    """Strings built from attack tokens, arbitrary code points and plain text."""
    part = st.one_of(st.sampled_from(TOKENS), ANY_CHAR, SURROGATE,
                     st.text(alphabet="abcz09._-/%", max_size=6))
    return st.lists(part, max_size=max_parts).map("".join)


def sneaky_text(plain: list[str]) -> st.SearchStrategy[str]:
    """A plausible value (``main``, ``lab/tree/x.ipynb``) with one attack token or odd
    code point slipped in: the inputs most likely to get past a check."""
    odd = st.one_of(st.sampled_from(TOKENS), ANY_CHAR, SURROGATE, INVISIBLE_CHAR)
    return st.builds(lambda base, at, token: base[:at % (len(base) + 1)] + token
                     + base[at % (len(base) + 1):],
                     st.sampled_from(plain), st.integers(0, 64), odd)


def fully_decoded(value: str) -> str:
    """Percent-decoding repeated until nothing changes (bounded)."""
    for _ in range(10):
        decoded = unquote(value)
        if decoded == value:
            break
        value = decoded
    return value


def invisible(value: str, allow_space: bool = False) -> list[str]:
    return [ch for ch in value
            if not (ch == " " and allow_space) and unicodedata.category(ch) not in VISIBLE]


def assert_safe_ref(value: str) -> None:
    """What must hold of every ref the validator accepts."""
    for form in (value, fully_decoded(value)):
        assert not invisible(form), (value, invisible(form))
        assert ".." not in form and "\x00" not in form, value
        assert not form.startswith("-"), value
    assert len(value) <= check.MAX_REF


def assert_safe_project(value: str, accepted: str) -> None:
    assert accepted.isascii() and len(accepted) <= check.MAX_PATH
    assert "%" not in accepted and ".." not in accepted and "\x00" not in accepted
    segments = accepted.split("/")
    assert len(segments) >= 2
    assert all(s and s[0] not in "-." for s in segments), accepted
    assert not invisible(accepted)


SERVER_BASE = "http://hub.example/user/alice/demo-hello/"


def assert_safe_server_path(accepted: str) -> None:
    """An accepted path stays inside the server's URL, read plain or decoded."""
    assert len(accepted) <= check.MAX_SERVER_PATH
    decoded = fully_decoded(accepted)
    for form in (accepted, decoded):
        assert not invisible(form, allow_space=True), (accepted, invisible(form, True))
        assert "\\" not in form and not form.startswith("/"), accepted
    path_part = decoded.split("?", 1)[0].split("#", 1)[0]
    assert ".." not in fully_decoded(accepted.split("?", 1)[0].split("#", 1)[0]).split("/")
    for form in (accepted, path_part):
        assert urljoin(SERVER_BASE, form).startswith(SERVER_BASE), accepted


class WhatwgURL:
    """URL resolution as browsers do it (the WHATWG URL standard), by Node's ``URL``.

    One ``node`` process answers a line of JSON ``[base, relative]`` with the
    resolved address, so a property test can ask hundreds of times cheaply.
    """

    SCRIPT = ("const rl=require('readline').createInterface({input:process.stdin});"
              "rl.on('line',l=>{const [b,r]=JSON.parse(l);let o;"
              "try{o=new URL(r,b).href}catch(e){o='!'+e.message}"
              "process.stdout.write(JSON.stringify(o)+'\\n')});")

    def __init__(self, node: str):
        self.proc = subprocess.Popen([node, "-e", self.SCRIPT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, encoding="utf-8",
                                     errors="surrogateescape")

    def resolve(self, base: str, relative: str) -> str:
        line = json.dumps([base, relative], ensure_ascii=True)
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)
