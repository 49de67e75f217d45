"""Validation of user input at the edge: project paths, refs, server options.

Everything that reaches a git command line, a URL or a Redis key passes through
here first. Refused input raises :class:`InvalidInput` with a message a person
can act on; nothing is changed before validation passes.
"""

from __future__ import annotations

import re

from .exceptions import InvalidInput

MAX_PATH = 255 * 4
MAX_REF = 255
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
_SHA = re.compile(r"^[0-9a-f]{7,64}$")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


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
    """A branch, tag or commit sha, following git's check-ref-format rules."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("A branch, tag or commit is required")
    if len(value) > MAX_REF:
        raise InvalidInput("Ref is too long")
    bad = (
        value.startswith(("-", "/", "."))
        or value.endswith(("/", ".", ".lock"))
        or ".." in value
        or "//" in value
        or "@{" in value
        or value == "@"
        or "/." in value
        or _REF_FORBIDDEN.search(value)
    )
    if bad:
        raise InvalidInput(f"Invalid branch, tag or commit {_show(value)}")
    return value


def is_sha(value: str) -> bool:
    return bool(_SHA.fullmatch(value))


def commit_sha(value: object) -> str:
    """A full commit sha as resolved by GitLab (40 or 64 hex digits)."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", value):
        raise InvalidInput("GitLab returned an invalid commit id")
    return value


def _show(value: str) -> str:
    """Quote user input for an error message, shortened and without control chars."""
    cleaned = _REF_FORBIDDEN.sub("?", value[:80])
    return repr(cleaned + ("…" if len(value) > 80 else ""))
