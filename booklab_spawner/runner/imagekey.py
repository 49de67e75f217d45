"""Which image a checkout needs: a hash of the files repo2docker builds from.

BinderHub names an image after the commit, so a commit that only changes a
notebook rebuilds the whole environment. Booklab names it after the
*environment*: the files repo2docker's buildpacks read (repo2docker 2026.4,
``repo2docker/buildpacks``). When ``binder/`` or ``.binder/`` exists,
repo2docker reads its environment files only from there, so the hash covers
that directory alone, and the image is built from those files alone
(:func:`booklab_spawner.runner.tree.build_context`): it holds nothing else of
the commit that built it. The rest of the repository reaches the container at
start (see :meth:`booklab_spawner.runner.containers.Launcher.start`), so a launch
shows exactly the files of its own commit.

A ``Dockerfile`` is built alone (repo2docker ignores the other environment
files then) and reads the repository only through its ``COPY``/``ADD``
sources: its key is the Dockerfile, its ignore files and the files those
sources match, when :mod:`.dockerfile` can read them off it (not for
``COPY . /x``, a variable, a heredoc, a bind mount...). Otherwise, and for
other repositories that make the image depend on *every* file, the key is the
whole tree: ``postBuild`` (runs with the whole repository),
an environment file that is a symbolic link (its content is another file's),
a Python package (``setup.py``, or a
``pyproject.toml`` with ``[project]`` and ``[build-system]``: ``pip install .``),
an R package (``DESCRIPTION``), or a requirements file that points at local
paths (``-e .``, ``-r other.txt``). For those the key is the commit's tree,
and any change rebuilds, as BinderHub would (Docker's layer cache keeps such a
rebuild short when the environment itself did not change).

Booklab reads the few files it must (``pyproject.toml``, requirements files)
from git's object store, never through the work tree, so a symbolic link cannot
make it open a file of the runner host. Image names end in an HMAC, keyed by the
runner token, of the project id and this hash: nobody without the token can
name another project's image (e.g. in a ``FROM`` line) — docs/security.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import tomllib

from ..crypto import derive_key
from ..exceptions import BuildFailed
from . import dockerfile, gitsafe

# files repo2docker reads, at the top level or in binder/ / .binder/
ENV_FILES = (
    "Dockerfile", ".dockerignore", ".containerignore",
    "requirements.txt", "requirements3.txt", "environment.yml", "environment.yaml",
    "Pipfile", "Pipfile.lock", "runtime.txt", "apt.txt", "postBuild", "start",
    "install.R", "DESCRIPTION", "Project.toml", "JuliaProject.toml", "REQUIRE",
    "default.nix", "setup.py", "pyproject.toml",
)
BINDER_DIRS = ("binder", ".binder")
HASH_VERSION = "booklab-env-v2"
MAX_SHOWN = 8  # environment files named in the log
MAX_READ = 1 << 20  # bytes of pyproject.toml / requirements*.txt read to classify them
_NAME_KEY_INFO = b"booklab image names v1"
_LOCAL_REQUIREMENT = re.compile(r"^\s*(-r|-c|-e|--|\.|/|file:)|\.\./|\./")


@dataclass(frozen=True)
class Environment:
    hash: str  # hex sha256
    files: tuple[str, ...]  # what it was computed from, for the log
    whole_tree: bool  # True: any change to the repository changes the image

    def describe(self) -> str:
        if self.whole_tree:
            return ("the whole repository (a Dockerfile, postBuild or a package install "
                    "may read every file)")
        shown = ", ".join(self.files[:MAX_SHOWN])
        more = len(self.files) - MAX_SHOWN
        return (shown + (f" and {more} more" if more > 0 else "")
                or "no environment files (repo2docker's defaults)")


def _r2d_version() -> str:
    try:
        return version("jupyter-repo2docker")
    except PackageNotFoundError:  # pragma: no cover - the runner depends on it
        return "unknown"


async def _git(gitdir: str, *args: str) -> bytes:
    home = os.path.join(os.path.dirname(os.path.normpath(gitdir)), "home")
    os.makedirs(home, mode=0o700, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *gitsafe.args("--git-dir", gitdir, *args), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=gitsafe.base_env(home))
    out, err = await proc.communicate()
    if proc.returncode:
        raise BuildFailed(f"cannot read the checkout: {err.decode(errors='replace').strip()}")
    return out


async def tree_entries(gitdir: str, sha: str) -> dict[str, str]:
    """``path -> "mode sha"`` of every entry of commit ``sha`` (git's own view: exact,
    exec bit and symbolic links too)."""
    out = await _git(gitdir, "ls-tree", "-r", "-z", "--full-tree", sha)
    entries: dict[str, str] = {}
    for item in out.split(b"\0"):
        if not item:
            continue
        meta, path = item.decode(errors="surrogateescape").split("\t", 1)
        mode, _type, blob = meta.split()
        entries[path] = f"{mode} {blob}"
    return entries


class Blobs:
    """Reads regular files of one commit from git's object store (never a link)."""

    def __init__(self, gitdir: str, entries: dict[str, str]):
        self.gitdir, self.entries = gitdir, entries

    async def read(self, path: str) -> bytes | None:
        """The file's bytes; None when it is missing, not a regular file, or too large."""
        mode, _, blob = self.entries.get(path, "0 ").partition(" ")
        if mode not in ("100644", "100755"):
            return None
        if int(await _git(self.gitdir, "cat-file", "-s", blob)) > MAX_READ:
            return None
        return await _git(self.gitdir, "cat-file", "blob", blob)


async def select(entries: dict[str, str], blobs: Blobs) -> tuple[list[str], bool]:
    """(the environment files, whether the image depends on the whole tree)."""
    dirs = [d for d in BINDER_DIRS if any(p.startswith(d + "/") for p in entries)]
    if len(dirs) > 1:  # repo2docker refuses this; let it say so in the build
        return [], True
    if dirs:
        files = sorted(p for p in entries if p.startswith(dirs[0] + "/"))
        names = {p.split("/", 1)[1] for p in files}
        whole = "postBuild" in names
        if "Dockerfile" in names and not whole:
            narrowed = await _dockerfile_reads(entries, blobs, f"{dirs[0]}/Dockerfile")
            files, whole = narrowed or files, narrowed is None
    elif "Dockerfile" in entries and "postBuild" not in entries:
        # repo2docker builds the Dockerfile alone: other environment files count only
        # when it COPYs them
        narrowed = await _dockerfile_reads(entries, blobs, "Dockerfile")
        files, whole = narrowed or ["Dockerfile"], narrowed is None
    else:
        files = sorted(p for p in ENV_FILES if p in entries)
        whole = bool(set(files) & {"postBuild", "setup.py", "DESCRIPTION", "Dockerfile"})
        whole = whole or await _is_package(blobs)
    linked = any(entries[p].startswith("120000 ") for p in files)
    return files, whole or linked or await _local_requirements(blobs, files)


async def _dockerfile_reads(entries: dict[str, str], blobs: Blobs,
                           path: str) -> list[str] | None:
    """The Dockerfile, its ignore files and every file its COPY/ADD sources match;
    None when the Dockerfile may read any file (:mod:`.dockerfile`)."""
    data = await blobs.read(path)
    if data is None:
        return None  # a link, or too large to read: the whole tree
    sources = dockerfile.context_sources(data.decode(errors="replace"))
    if sources is None:
        return None
    ignores = [p for p in (".dockerignore", ".containerignore", path + ".dockerignore")
               if p in entries]
    read = [p for p in entries if dockerfile.matches(p, sources)]
    return sorted({path, *ignores, *read})


async def _is_package(blobs: Blobs) -> bool:
    data = await blobs.read("pyproject.toml")
    if data is None:
        return "pyproject.toml" in blobs.entries  # a link or huge: assume it is one
    try:
        parsed = tomllib.loads(data.decode(errors="replace"))
    except tomllib.TOMLDecodeError:
        return False
    return "project" in parsed and "build-system" in parsed


async def _local_requirements(blobs: Blobs, files: list[str]) -> bool:
    for path in files:
        if os.path.basename(path) not in ("requirements.txt", "requirements3.txt"):
            continue
        data = await blobs.read(path)
        if data is None:
            return True  # too large to classify: the safe answer
        lines = [line.split("#", 1)[0] for line in data.decode(errors="replace").splitlines()]
        if any(line.strip() and _LOCAL_REQUIREMENT.search(line) for line in lines):
            return True
    return False


async def environment(gitdir: str, sha: str, user_id: int, user_name: str,
                      entries: dict[str, str] | None = None) -> Environment:
    """The environment key of commit ``sha`` in the git directory ``gitdir``
    (``entries``: its :func:`tree_entries`, when the caller has them already)."""
    if entries is None:
        entries = await tree_entries(gitdir, sha)
    files, whole = await select(entries, Blobs(gitdir, entries))
    digest = hashlib.sha256()
    for part in (HASH_VERSION, _r2d_version(), str(user_id), user_name):
        digest.update(part.encode() + b"\0")
    if whole:
        tree = (await _git(gitdir, "rev-parse", f"{sha}^{{tree}}")).decode().strip()
        digest.update(b"tree " + tree.encode())
    else:
        for path in files:
            digest.update(f"{entries[path]} {path}\0".encode(errors="surrogateescape"))
    return Environment(hash=digest.hexdigest(), files=tuple(files), whole_tree=whole)


def name_key(runner_token: str) -> bytes:
    """The key image names are signed with, derived from the runner token."""
    return derive_key(runner_token, _NAME_KEY_INFO)


def image_name(prefix: str, project_id: str, project_path: str, env_hash: str,
               key: bytes) -> str:
    """``<prefix><project id>-<slug>:env-<HMAC(key, project id, env hash), 32 hex>``.

    Readable before the colon (operators see which project an image is for),
    unguessable after it without the runner token: a build cannot name another
    project's image, and two projects never share one.
    """
    mac = hmac.new(key, f"{project_id}\0{env_hash}".encode(), hashlib.sha256).hexdigest()
    return f"{image_repo(prefix, project_id, project_path)}:env-{mac[:32]}"


def image_repo(prefix: str, project_id: str, project_path: str) -> str:
    """The part of a project's image names before the colon (one per project)."""
    slug = re.sub(r"[^a-z0-9]+", "-", project_path.lower()).strip("-")[:60] or "project"
    pid = re.sub(r"[^0-9a-z]", "", str(project_id).lower())[:20] or "0"
    return f"{prefix}{pid}-{slug}"


def image_key(image: str) -> str:
    """An id-safe key for one image name (for the build lock)."""
    return hashlib.sha256(image.encode()).hexdigest()[:32]
