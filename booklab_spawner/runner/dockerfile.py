"""Which files of the build context a Dockerfile reads.

A ``Dockerfile`` repository used to be keyed on its whole tree: any commit, a
notebook-only one too, rebuilt the image. But a Dockerfile reads the build
context only through ``COPY`` and ``ADD`` sources (and ``RUN --mount`` binds):
``RUN`` steps see the files the image already holds, nothing else. When every
such source can be read off the file, the image depends on the Dockerfile,
the ignore files and the files those sources match, and nothing more.

:func:`context_sources` answers with those sources, or ``None`` whenever it
cannot be sure, and then the key stays the whole tree: a parser directive
(``# escape=``, ``# syntax=``: another frontend may read more), heredocs, a
source with a variable, ``.`` or anything that leaves the context, ``--parents``
or ``--exclude``, ``RUN --mount`` of type ``bind`` (the default) or with no
type, and ``ONBUILD``. Sources may be globs; matching them (``matches``) may
take more files than Docker would (``*`` also crosses ``/`` here), never
fewer: a file too many only costs a rebuild, a file too few would leave an
image stale.

Not seen from here: ``ONBUILD`` triggers of a *base* image that copy the
context. Such a base image makes the key too narrow; the launch still shows
the commit's own files (they are copied in at start), but the environment
built from them can be older. docs/runner.md says so.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z]+)\s*=")
_URL = re.compile(r"^(https?://|git@|git://)")
_SAFE_MOUNTS = {"cache", "secret", "ssh", "tmpfs"}


def _instructions(text: str) -> list[str] | None:
    """Logical lines (continuations joined), comments dropped; None on a directive."""
    out: list[str] = []
    pending, at_top = "", True
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and line.startswith("#"):
            if at_top and _DIRECTIVE.match(line):
                return None  # escape=, syntax=, check=: read them as Docker would, or not at all
            at_top = False
            continue
        at_top = at_top and not line
        if not line and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending.strip():
        out.append(pending)
    return out


def _words(rest: str) -> list[str] | None:
    rest = rest.strip()
    if rest.startswith("["):
        try:
            parsed = json.loads(rest)
        except ValueError:
            return None
        return parsed if all(isinstance(w, str) for w in parsed) else None
    try:
        return shlex.split(rest, posix=True)
    except ValueError:
        return None


def _flags(rest: str) -> tuple[list[str], str]:
    """An instruction's leading ``--flag[=value]`` words, and what follows them."""
    flags = []
    while rest.lstrip().startswith("--"):
        flag, _, rest = rest.lstrip().partition(" ")
        flags.append(flag)
    return flags, rest


def _copy_sources(keyword: str, rest: str) -> list[str] | None:
    """Context paths one COPY/ADD reads ([] for none), None when they cannot be known."""
    flags, rest = _flags(rest)
    if any(f.startswith(("--parents", "--exclude")) for f in flags):
        return None
    if any(f.startswith("--from") for f in flags):
        return []  # another stage or image, not the context
    words = _words(rest)
    if not words or len(words) < 2:
        return None
    sources = []
    for source in words[:-1]:
        if keyword == "ADD" and _URL.match(source):
            continue
        path = source.strip()
        while path.startswith("./"):
            path = path[2:]
        path = path.lstrip("/").rstrip("/")
        parts = path.split("/")
        if not path or "$" in path or "\\" in path or any(p in ("", ".", "..") for p in parts):
            return None  # the whole context, a variable, or out of it
        sources.append(path)
    return sources


def _run_reads_context(rest: str) -> bool:
    """Whether a RUN's ``--mount`` flags bind the context (``bind`` is the default)."""
    for flag in _flags(rest)[0]:
        name, _, value = flag.partition("=")
        if name == "--mount":
            options = dict(o.partition("=")[::2] for o in value.split(","))
            if options.get("type", "bind") not in _SAFE_MOUNTS:
                return True
    return False


def context_sources(text: str) -> list[str] | None:
    """The context paths (maybe globs) the Dockerfile ``text`` reads, or None when the
    image may depend on any file of the context."""
    lines = _instructions(text)
    if lines is None:
        return None
    sources: list[str] = []
    for line in lines:
        if "<<" in line:
            return None  # heredocs: their bodies are not instructions
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ONBUILD":
            return None
        if keyword in ("COPY", "ADD"):
            found = _copy_sources(keyword, rest)
            if found is None:
                return None
            sources.extend(found)
        elif keyword == "RUN" and "--mount" in rest and _run_reads_context(rest):
            return None
    return sources


def matches(path: str, sources: list[str]) -> bool:
    """Whether the context file ``path`` is read by one of ``sources`` (a source names
    a file, a directory it reads all of, or a glob of either)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(prefix, source)
               for source in sources for prefix in prefixes)
