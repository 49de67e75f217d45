"""Names JupyterHub accepts for named servers, derived from (project, ref).

JupyterHub wants 1-30 characters of ``[a-z0-9-]`` starting with a letter. One
server per project and ref: the name keeps a readable part of both and a short
hash of the exact pair, so different refs never collide.
"""

from __future__ import annotations

import hashlib
import re

MAX_LEN = 30
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,29}$")


def _slug(text: str, limit: int) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")[:limit]


def server_name(project: str, ref: str) -> str:
    """E.g. ``("demo/hello", "main") -> "hello-main-1f3a9c"``."""
    digest = hashlib.sha256(f"{project}\0{ref}".encode()).hexdigest()[:6]
    base = _slug(project.rsplit("/", 1)[-1], 12) or "project"
    if not base[0].isalpha():
        base = "p" + base[:11]
    ref_part = _slug(ref, 9)
    name = f"{base}-{ref_part}-{digest}" if ref_part else f"{base}-{digest}"
    name = re.sub(r"-+", "-", name)
    assert is_valid(name), name
    return name


def is_valid(name: str) -> bool:
    return bool(_NAME_RE.match(name)) and not name.endswith("-")
