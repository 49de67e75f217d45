"""Which image a checkout needs: a hash of the files repo2docker builds from.

BinderHub names an image after the commit, so a commit that only changes a
notebook rebuilds the whole environment. Booklab names it after the
*environment*: the files repo2docker's buildpacks read (repo2docker 2026.4,
``repo2docker/buildpacks``). When ``binder/`` or ``.binder/`` exists,
repo2docker reads its environment files only from there, so the hash covers
that directory alone. The rest of the repository reaches the container at
start (see :meth:`booklab_spawner.runner.launch.Launcher.start`).

Some repositories make the image depend on *every* file: ``postBuild`` (runs
with the whole repository), a Python package (``setup.py``, or a
``pyproject.toml`` with ``[project]`` and ``[build-system]``: ``pip install .``),
an R package (``DESCRIPTION``), or a requirements file that points at local
paths (``-e .``, ``-r other.txt``). For those the key is the commit's tree,
and any change rebuilds, as BinderHub would.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import tomllib

from ..exceptions import BuildFailed

# files repo2docker reads, at the top level or in binder/ / .binder/
ENV_FILES = (
    "Dockerfile", ".dockerignore", ".containerignore",
    "requirements.txt", "requirements3.txt", "environment.yml", "environment.yaml",
    "Pipfile", "Pipfile.lock", "runtime.txt", "apt.txt", "postBuild", "start",
    "install.R", "DESCRIPTION", "Project.toml", "JuliaProject.toml", "REQUIRE",
    "default.nix", "setup.py", "pyproject.toml",
)
BINDER_DIRS = ("binder", ".binder")
HASH_VERSION = "booklab-env-v1"
_LOCAL_REQUIREMENT = re.compile(r"^\s*(-r|-c|-e|--|\.|/|file:)|\.\./|\./")


@dataclass(frozen=True)
class Environment:
    hash: str  # hex sha256
    files: tuple[str, ...]  # what it was computed from, for the log
    whole_tree: bool  # True: any change to the repository changes the image

    def describe(self) -> str:
        if self.whole_tree:
            return "the whole repository (postBuild or a package install reads every file)"
        return ", ".join(self.files) or "no environment files (repo2docker's defaults)"


def _r2d_version() -> str:
    try:
        return version("jupyter-repo2docker")
    except PackageNotFoundError:  # pragma: no cover - the runner depends on it
        return "unknown"


async def _git(checkout: str, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "git", "-C", checkout, *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
             "HOME": checkout})
    out, err = await proc.communicate()
    if proc.returncode:
        raise BuildFailed(f"cannot read the checkout: {err.decode(errors='replace').strip()}")
    return out


async def tree_entries(checkout: str) -> dict[str, str]:
    """``path -> "mode sha"`` of every file at HEAD (git's own view: exact, exec bit too)."""
    out = await _git(checkout, "ls-tree", "-r", "-z", "--full-tree", "HEAD")
    entries: dict[str, str] = {}
    for item in out.split(b"\0"):
        if not item:
            continue
        meta, path = item.decode(errors="surrogateescape").split("\t", 1)
        mode, _type, sha = meta.split()
        entries[path] = f"{mode} {sha}"
    return entries


def select(entries: dict[str, str], checkout: str) -> tuple[list[str], bool]:
    """(the environment files, whether the image depends on the whole tree)."""
    dirs = [d for d in BINDER_DIRS if any(p.startswith(d + "/") for p in entries)]
    if len(dirs) > 1:  # repo2docker refuses this; let it say so in the build
        return [], True
    if dirs:
        files = sorted(p for p in entries if p.startswith(dirs[0] + "/"))
        names = {p.split("/", 1)[1] for p in files}
        return files, "postBuild" in names or _local_requirements(checkout, files)
    files = sorted(p for p in ENV_FILES if p in entries)
    whole = ("postBuild" in files or "setup.py" in files or "DESCRIPTION" in files
             or _is_package(checkout) or _local_requirements(checkout, files))
    return files, whole


def _is_package(checkout: str) -> bool:
    try:
        with open(os.path.join(checkout, "pyproject.toml"), "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return "project" in data and "build-system" in data


def _local_requirements(checkout: str, files: list[str]) -> bool:
    for path in files:
        if os.path.basename(path) not in ("requirements.txt", "requirements3.txt"):
            continue
        try:
            with open(os.path.join(checkout, path), errors="replace") as f:
                lines = [line.split("#", 1)[0] for line in f]
        except OSError:
            continue
        if any(line.strip() and _LOCAL_REQUIREMENT.search(line) for line in lines):
            return True
    return False


async def environment(checkout: str, user_id: int, user_name: str) -> Environment:
    """The environment key of the commit checked out in ``checkout``."""
    entries = await tree_entries(checkout)
    files, whole = select(entries, checkout)
    digest = hashlib.sha256()
    for part in (HASH_VERSION, _r2d_version(), str(user_id), user_name):
        digest.update(part.encode() + b"\0")
    if whole:
        tree = (await _git(checkout, "rev-parse", "HEAD^{tree}")).decode().strip()
        digest.update(b"tree " + tree.encode())
    else:
        for path in files:
            digest.update(f"{entries[path]} {path}\0".encode(errors="surrogateescape"))
    return Environment(hash=digest.hexdigest(), files=tuple(files), whole_tree=whole)


def image_name(prefix: str, project_id: str, project_path: str, env_hash: str) -> str:
    """``<prefix><project id>-<slug>:env-<hash16>``, a valid lower-case Docker name."""
    slug = re.sub(r"[^a-z0-9]+", "-", project_path.lower()).strip("-")[:60] or "project"
    pid = re.sub(r"[^0-9a-z]", "", str(project_id).lower())[:20] or "0"
    return f"{prefix}{pid}-{slug}:env-{env_hash[:16]}"


def image_key(image: str) -> str:
    """An id-safe key for one image name (for the build lock)."""
    return hashlib.sha256(image.encode()).hexdigest()[:32]
