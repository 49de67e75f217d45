"""Bare repositories of the double, read and written with the real `git`.

Writers (`init_bare`, `commit_files`, `create_tag`) are synchronous: the
Python API calls them from the test's thread. Readers are coroutines that run
git as an asyncio subprocess, so the server's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

AUTHOR = ("Administrator", "admin@example.com")
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")
_COMMIT_FIELDS = 9
_COMMIT_FORMAT = "%x00".join(["%H", "%P", "%an", "%ae", "%aI", "%cn", "%ce", "%cI", "%B"]) + "%x00"


@dataclass(frozen=True)
class Symlink:
    """A file value for :func:`commit_files`: a symbolic link to ``target``."""
    target: str


@dataclass(frozen=True)
class Executable:
    """A file value for :func:`commit_files`: an executable file (mode 100755)."""
    content: str | bytes


class GitError(RuntimeError):
    pass


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_TERMINAL_PROMPT": "0",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": os.environ.get("HOME", "/tmp"),
           "LC_ALL": "C"}
    env.update(extra or {})
    return env


def valid_ref(name: str) -> bool:
    """A branch/tag name or sha that is safe to hand to git (never an option)."""
    return (0 < len(name) <= 255 and not name.startswith(("-", "/", "."))
            and not name.endswith(("/", ".", ".lock")) and not _BAD_REF.search(name))


# -- writers (synchronous) ----------------------------------------------------
def _git(repo: Path, *args: str, data: bytes | None = None,
         env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], input=data, capture_output=True,
                          env=_env(env), check=False)
    if proc.returncode != 0:
        raise GitError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode().strip()


def _git_bytes(repo: Path, *args: str) -> bytes:
    """Like ``_git``, for output that is file content (not decoded, not stripped)."""
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, env=_env(),
                          check=False)
    if proc.returncode != 0:
        raise GitError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def init_bare(repo: Path, default_branch: str) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    _git(repo, "init", "--bare", "--quiet", f"--initial-branch={default_branch}")
    # What GitLab (Gitaly) enables so that clients may fetch a commit by sha.
    for key in ("uploadpack.allowAnySHA1InWant", "uploadpack.allowReachableSHA1InWant",
                "uploadpack.allowFilter", "http.uploadpack"):
        _git(repo, "config", key, "true")
    _git(repo, "config", "http.receivepack", "false")


def rev_parse(repo: Path, ref: str) -> str | None:
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except GitError:
        return None


FileValue = str | bytes | Symlink | Executable | None


def commit_files(repo: Path, branch: str, files: dict[str, FileValue], message: str,
                 base: str | None, author: tuple[str, str] = AUTHOR) -> str:
    """Commit `files` (None deletes) on top of `base` and move `branch` there."""
    _git(repo, "check-ref-format", f"refs/heads/{branch}")
    with tempfile.TemporaryDirectory() as tmp:
        index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if base:
            _git(repo, "read-tree", base, env=index)
        entries = []
        for path, content in files.items():
            if content is None:  # mode 0 removes the entry
                entries.append(f"0 {'0' * 40}\t{path}\0")
                continue
            mode = "100644"
            if isinstance(content, Symlink):
                mode, content = "120000", content.target
            elif isinstance(content, Executable):
                mode, content = "100755", content.content
            data = content.encode() if isinstance(content, str) else content
            blob = _git(repo, "hash-object", "-w", "--stdin", data=data)
            entries.append(f"{mode} {blob}\t{path}\0")
        _git(repo, "update-index", "-z", "--index-info", data="".join(entries).encode(),
             env=index)
        tree = _git(repo, "write-tree", env=index)
    people = {"GIT_AUTHOR_NAME": author[0], "GIT_AUTHOR_EMAIL": author[1],
              "GIT_COMMITTER_NAME": author[0], "GIT_COMMITTER_EMAIL": author[1]}
    parents = ["-p", base] if base else []
    sha = _git(repo, "commit-tree", tree, *parents, "-m", message, env=people)
    _git(repo, "update-ref", f"refs/heads/{branch}", sha)
    return sha


def create_tag(repo: Path, name: str, target: str, message: str | None = None) -> str:
    _git(repo, "check-ref-format", f"refs/tags/{name}")
    if message:
        people = {"GIT_COMMITTER_NAME": AUTHOR[0], "GIT_COMMITTER_EMAIL": AUTHOR[1]}
        _git(repo, "tag", "-a", "-m", message, "--", name, target, env=people)
    else:
        _git(repo, "update-ref", f"refs/tags/{name}", target)
    return _git(repo, "rev-parse", f"refs/tags/{name}^{{commit}}")


# -- readers (async) ----------------------------------------------------------
@dataclass
class Commit:
    sha: str
    parents: list[str]
    author_name: str
    author_email: str
    authored_date: str
    committer_name: str
    committer_email: str
    committed_date: str
    message: str

    @property
    def title(self) -> str:
        return self.message.split("\n", 1)[0]


@dataclass
class Ref:
    name: str
    target: str  # what the ref points to (a tag object for annotated tags)
    commit: Commit
    tag_message: str | None = None
    tagged_at: str | None = None


async def run_git(repo: Path, *args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "git", "-C", str(repo), *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, stdin=asyncio.subprocess.DEVNULL, env=_env())
    out, _ = await proc.communicate()
    return proc.returncode or 0, out


async def resolve(repo: Path, ref: str) -> str | None:
    """Resolve a branch, tag or (abbreviated) sha to a commit sha, like git does."""
    if not valid_ref(ref):
        return None
    code, out = await run_git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    return out.decode().strip() if code == 0 else None


async def commits(repo: Path, shas: list[str]) -> dict[str, Commit]:
    if not shas:
        return {}
    code, out = await run_git(repo, "log", "--no-walk=unsorted", f"--format={_COMMIT_FORMAT}",
                              *dict.fromkeys(shas), "--")
    if code != 0:
        raise GitError("git log failed")
    tokens = out.decode(errors="replace").split("\x00")
    found = {}
    for i in range(0, len(tokens) - 1, _COMMIT_FIELDS):
        f = tokens[i:i + _COMMIT_FIELDS]
        sha = f[0].lstrip("\n")
        found[sha] = Commit(sha, f[1].split(), f[2], f[3], f[4], f[5], f[6], f[7], f[8])
    return found


async def refs(repo: Path, kind: str) -> list[Ref]:
    """All branches (kind "heads") or tags ("tags") with their commits."""
    fmt = "%00".join(["%(refname)", "%(objectname)", "%(*objectname)", "%(taggerdate:iso-strict)",
                      "%(contents)"]) + "%00"
    code, out = await run_git(repo, "for-each-ref", f"--format={fmt}", f"refs/{kind}/")
    if code != 0:
        raise GitError("git for-each-ref failed")
    tokens = out.decode(errors="replace").split("\x00")
    rows = [tokens[i:i + 5] for i in range(0, len(tokens) - 1, 5)]
    shas = [r[2] or r[1] for r in rows]
    found = await commits(repo, shas)
    result = []
    for row, sha in zip(rows, shas, strict=True):
        name = row[0].lstrip("\n").removeprefix(f"refs/{kind}/")
        annotated = bool(row[2])
        result.append(Ref(name=name, target=row[1], commit=found[sha],
                          tag_message=row[4] if annotated else None,
                          tagged_at=row[3] or None))
    return result


async def merged_into(repo: Path, sha: str) -> set[str]:
    """Names of the branches whose tips are reachable from `sha`."""
    code, out = await run_git(repo, "for-each-ref", f"--merged={sha}", "--format=%(refname)",
                              "refs/heads/")
    lines = out.decode().split("\n") if code == 0 else []
    return {line.removeprefix("refs/heads/") for line in lines if line}


async def stats(repo: Path, sha: str) -> dict[str, int]:
    code, out = await run_git(repo, "show", "--numstat", "--format=", "--no-renames", sha, "--")
    adds = dels = 0
    for line in out.decode(errors="replace").splitlines() if code == 0 else []:
        parts = line.split("\t")
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            adds, dels = adds + int(parts[0]), dels + int(parts[1])
    return {"additions": adds, "deletions": dels, "total": adds + dels}
