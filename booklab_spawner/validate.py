"""Validation of user input at the edge: project paths, refs, server options, paths.

Everything that reaches a git command line, a URL or a Redis key passes through
here first. Refused input raises :class:`InvalidInput` with a message a person
can act on; nothing is changed before validation passes.

Input is checked as given *and* after percent-decoding (until nothing more
decodes), so an encoded ``..`` (``%2e%2e``, ``.%2E``, ``%252e%252e``) or an
encoded leading ``-`` is refused like the plain one: some layer on the way
(a browser, a proxy, GitLab) may decode it.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

from .exceptions import InvalidInput

MAX_PATH = 255 * 4
MAX_REF = 255
MAX_SERVER_PATH = 2000
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
_SHA = re.compile(r"^[0-9a-f]{7,64}$")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_MAX_DECODE_ROUNDS = 4

# The Unicode categories a ref or a path may show: letters, marks, numbers,
# punctuation and symbols. This is what JupyterHub accepts in a server's display
# name; everything else (controls Cc, formats Cf such as U+202E and U+200B, line
# and paragraph separators Zl/Zp, other spaces Zs, surrogates Cs, private use Co,
# unassigned code points and non-characters Cn) is refused.
_VISIBLE = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No",
                      "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So"})


def project_path(value: object) -> str:
    """A GitLab project path such as ``group/sub/project``."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("A project path is required, e.g. group/project")
    if len(value) > MAX_PATH:
        raise InvalidInput("Project path is too long")
    segments = value.strip("/").split("/")
    if len(segments) < 2 or len(segments) > 21:
        raise InvalidInput(f"Invalid project path {_show(value)}: expected group/project")
    for seg in segments:
        if not _SEGMENT.fullmatch(seg) or seg.endswith((".git", ".atom")) or ".." in seg:
            raise InvalidInput(f"Invalid project path {_show(value)}")
    return "/".join(segments)


def ref(value: object) -> str:
    """A branch, tag or commit sha, following git's check-ref-format rules.

    Only visible characters (see ``_VISIBLE``), and the rules hold for the
    percent-decoded form too.
    """
    if not isinstance(value, str) or not value:
        raise InvalidInput("A branch, tag or commit is required")
    if len(value) > MAX_REF:
        raise InvalidInput("Ref is too long")
    hidden = _invisible(value, allow_space=True)  # a space: git's rules below
    if hidden:
        raise InvalidInput(f"Invalid branch, tag or commit {_show(value)}: it contains "
                           f"an invisible or control character ({_codepoint(hidden)})")
    decoded = percent_decoded(value, "The branch, tag or commit")
    if _bad_ref(value) or (decoded != value and (_bad_ref(decoded)
                                                  or _invisible(decoded, allow_space=False))):
        raise InvalidInput(f"Invalid branch, tag or commit {_show(value)}")
    return value


def _bad_ref(value: str) -> bool:
    return bool(
        value.startswith(("-", "/", "."))
        or value.endswith(("/", ".", ".lock"))
        or ".." in value
        or "//" in value
        or "@{" in value
        or value == "@"
        or "/." in value
        or _REF_FORBIDDEN.search(value)
    )


def server_path(value: object) -> str:
    """Where to go inside the person's server (Binder's ``urlpath``), relative to its root.

    The result is only ever appended to the server's own URL, and stays inside
    it however a browser or proxy reads it: no ``..`` segment (also encoded:
    ``%2e%2e``, ``.%2E``, double encoding), no backslash, no scheme or host
    (``javascript:``, ``//evil.example``), no control or invisible characters.
    One leading ``/`` is dropped (Binder's links often have it).
    """
    if not isinstance(value, str):
        raise InvalidInput("The path to open in the server is invalid")
    if len(value) > MAX_SERVER_PATH:
        raise InvalidInput("The path to open in the server is too long")
    path = value[1:] if value.startswith("/") else value
    decoded = percent_decoded(path, "The path to open in the server")
    where = re.split(r"[?#]", path, maxsplit=1)[0]
    for form in (path, decoded):
        hidden = _invisible(form, allow_space=True)
        if hidden:
            raise InvalidInput("The path to open in the server contains an invisible or "
                               f"control character ({_codepoint(hidden)})")
        if "\\" in form:
            raise InvalidInput("The path to open in the server may not contain '\\'")
        if form.startswith("/") or _SCHEME.match(form):
            raise InvalidInput("The path to open in the server must be a path inside it, "
                               "not another address")
    if ".." in where.split("/") or ".." in percent_decoded(where).split("/"):
        raise InvalidInput("The path to open in the server may not contain '..' "
                           "(nor an encoded '%2e%2e')")
    return path


def percent_decoded(value: str, what: str = "Input") -> str:
    """``value`` with percent-escapes decoded until nothing changes (double encoding too).

    Raises InvalidInput for input encoded more times than anyone does by accident.
    """
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = unquote(value)
        if decoded == value:
            return value
        value = decoded
    if unquote(value) != value:
        raise InvalidInput(f"{what} is percent-encoded too many times")
    return value


def is_sha(value: str) -> bool:
    return bool(_SHA.fullmatch(value))


def commit_sha(value: object) -> str:
    """A full commit sha as resolved by GitLab (40 or 64 hex digits)."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", value):
        raise InvalidInput("GitLab returned an invalid commit id")
    return value


def _invisible(value: str, allow_space: bool) -> str | None:
    """The first character of ``value`` that is not visible (or a plain space if allowed)."""
    for ch in value:
        if " " < ch < "\x7f" or (ch == " " and allow_space):
            continue
        if unicodedata.category(ch) not in _VISIBLE:
            return ch
    return None


def _codepoint(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def _show(value: str) -> str:
    """Quote user input for an error message, shortened, invisible characters as '?'."""
    cleaned = "".join(ch if " " <= ch < "\x7f" or not _invisible(ch, allow_space=False)
                      else "?" for ch in value[:80])
    return repr(cleaned + ("…" if len(value) > 80 else ""))
