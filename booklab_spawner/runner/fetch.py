"""Fetch a repository at one commit, without leaving a credential on disk.

The token travels in an ``Authorization`` header given to git through
``GIT_CONFIG_*`` environment variables: it is never in a URL, in ``.git/config``,
in the process list, or in the log (the job's scrubber knows it).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from ..exceptions import FetchFailed

LogLine = Callable[[str], Awaitable[None]]


def check_clone_url(clone_url: str, gitlab_url: str) -> str:
    """The clone URL must point into the configured GitLab: the token goes nowhere else."""
    url, base = urlsplit(clone_url), urlsplit(gitlab_url)
    if url.scheme not in ("http", "https") or not base.netloc:
        raise FetchFailed(f"refusing to clone from {url.scheme}://{url.netloc}: not HTTP(S)")
    if (url.scheme, url.netloc) != (base.scheme, base.netloc) or url.username or url.password:
        raise FetchFailed(f"refusing to send a GitLab token to {url.scheme}://{url.hostname}: "
                          f"it is not the configured GitLab {gitlab_url}")
    return clone_url


def git_env(home: str, username: str, password: str) -> dict[str, str]:
    basic = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,  # no user or system git config leaks in
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": "http:https",
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        "GIT_CONFIG_KEY_1": "http.followRedirects",
        "GIT_CONFIG_VALUE_1": "false",
    }


async def run_git(args: list[str], env: dict[str, str], log_line: LogLine,
                  cwd: str | None = None) -> int:
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                await log_line(line)
        return await proc.wait()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise


async def fetch(clone_url: str, ref: str, sha: str, dest: str, username: str, password: str,
                log_line: LogLine) -> None:
    """Check out ``sha`` of ``clone_url`` into the empty directory ``dest``."""
    home = os.path.join(os.path.dirname(dest), "home")
    os.makedirs(home, exist_ok=True)
    env = git_env(home, username, password)
    if await run_git(["init", "-q", dest], env, log_line):
        raise FetchFailed("git init failed")
    # a shallow fetch of exactly the resolved commit; GitLab allows wants by sha
    code = await run_git(["fetch", "--depth", "1", "--no-tags", "--", clone_url, sha],
                         env, log_line, cwd=dest)
    if code:
        await log_line(f"Fetching the commit directly failed; fetching {ref} instead")
        code = await run_git(["fetch", "--no-tags", "--", clone_url, ref], env, log_line,
                             cwd=dest)
    if code:
        raise FetchFailed(f"git fetch of {clone_url} failed (exit code {code})")
    if await run_git(["checkout", "-q", "--detach", sha], env, log_line, cwd=dest):
        raise FetchFailed(f"commit {sha} is not in the fetched history of {ref}")
    # give the notebook a usable remote, without any credential in it
    await run_git(["remote", "add", "origin", clone_url], env, log_line, cwd=dest)
