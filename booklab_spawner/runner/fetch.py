"""Fetch a repository at one commit, without leaving a credential behind.

Three credentials, as the hub prepared them (docs/protocol.md, "Secrets"):

- ``proxy``: a one-time secret for the hub's read-only git proxy
  (``<hub_url>booklab/git/<job>``), sent like a token; the hub fetches from
  GitLab with the user's token, which never reaches the runner.
- ``token``: a read-only token (the hub no longer sends one); it travels in an
  ``Authorization`` header given to git through ``GIT_CONFIG_*`` environment
  variables: it is never in a URL, in ``.git/config``, in the process list, or
  in the log (the scrubber knows it).
- ``ssh``: a read-only deploy key, written 0600 into the job's private
  (0700) directory only for the fetch, used through a throwaway
  ``GIT_SSH_COMMAND`` that ignores every ssh config and agent and checks the
  server's host key strictly against the known hosts the hub published.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shlex
import shutil
import signal
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from ..exceptions import FetchFailed
from . import gitsafe

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


def check_proxy_url(hub_url: str, job_id: str) -> str:
    """The hub's read-only git proxy URL for one job (no credential in it)."""
    base = urlsplit(hub_url)
    if (base.scheme not in ("http", "https") or not base.netloc or base.username
            or base.password or base.query or base.fragment):
        raise FetchFailed("refusing to fetch through the hub: its URL (conf hub_url or "
                          "the runner's --hub-url) is not a plain http(s) URL")
    return hub_url.rstrip("/") + f"/booklab/git/{job_id}"


def sweep_work_dir(work_dir: str) -> int:
    """Remove job directories (checkouts, deploy key files) a killed runner left."""
    removed = 0
    for name in os.listdir(work_dir):
        path = os.path.join(work_dir, name)
        if name.startswith("booklab-job-") and os.path.isdir(path) \
                and not os.path.islink(path):
            forget_key(os.path.join(path, "home"))  # the key first, whatever else fails
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


# ssh://[user@]host[:port]/path or the scp-like user@host:path GitLab shows
# user, host and path never start with "-": ssh (or git-upload-pack) would read an option
_USER, _HOST = r"[A-Za-z0-9_][A-Za-z0-9._-]*", r"[A-Za-z0-9][A-Za-z0-9.-]*"
_SSH_URL = re.compile(rf"^(?:ssh://(?:{_USER}@)?{_HOST}(?::\d{{1,5}})?/"
                      rf"|{_USER}@{_HOST}:)[A-Za-z0-9_][A-Za-z0-9._/-]*$")


def check_ssh_url(ssh_url: str) -> str:
    """An SSH clone URL in one of GitLab's two shapes, and nothing an ssh client
    could read as an option."""
    if not ssh_url or not _SSH_URL.fullmatch(ssh_url) or "/-" in ssh_url or ".." in ssh_url:
        raise FetchFailed(f"refusing the SSH clone URL {ssh_url!r}")
    return ssh_url


def _base_env(home: str) -> dict[str, str]:
    return gitsafe.base_env(home)  # nothing of the repository configures git


def ssh_env(home: str, private_key: str, known_hosts: str) -> dict[str, str]:
    """Write the key (0600) and known hosts into ``home`` (private); git env using them."""
    if not known_hosts.strip():
        raise FetchFailed("No known host key for GitLab's SSH server: the hub publishes it as "
                          "ssh_known_hosts, or start the runner with --known-hosts FILE")
    os.makedirs(home, mode=0o700, exist_ok=True)
    key_file, hosts_file = os.path.join(home, "deploy_key"), os.path.join(home, "known_hosts")
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private_key.strip() + "\n")
    with open(hosts_file, "w") as f:
        f.write(known_hosts.strip() + "\n")
    ssh = ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={hosts_file}", "-o", "GlobalKnownHostsFile=/dev/null",
           "-o", "IdentitiesOnly=yes", "-o", f"IdentityFile={key_file}",
           "-o", "IdentityAgent=none", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30"]
    env = _base_env(home)
    env.update(GIT_ALLOW_PROTOCOL="ssh", GIT_SSH_COMMAND=shlex.join(ssh), GIT_SSH_VARIANT="ssh")
    return env


def forget_key(home: str) -> None:
    """Delete the deploy key file as soon as the fetch is over."""
    for name in ("deploy_key", "known_hosts"):
        try:
            os.unlink(os.path.join(home, name))
        except FileNotFoundError:
            pass


def git_env(home: str, username: str, password: str) -> dict[str, str]:
    basic = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {
        **_base_env(home),
        "GIT_ALLOW_PROTOCOL": "http:https",
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        "GIT_CONFIG_KEY_1": "http.followRedirects",
        "GIT_CONFIG_VALUE_1": "false",
    }


async def run_git(args: list[str], env: dict[str, str], log_line: LogLine,
                  cwd: str | None = None) -> int:
    # a process group of its own: a cancelled fetch kills git *and* the helpers it runs
    # (git-remote-http, ssh), which hold its output pipe open and would otherwise keep
    # fetching, and keep proc.wait() waiting, until GitLab answers
    proc = await asyncio.create_subprocess_exec(
        *gitsafe.args(*args), cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                await log_line(line)
        return await proc.wait()
    except asyncio.CancelledError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        raise


async def fetch(clone_url: str, ref: str, sha: str, dest: str, username: str, password: str,
                log_line: LogLine) -> None:
    """Check out ``sha`` of ``clone_url`` (HTTPS, token) into the empty directory ``dest``."""
    home = os.path.join(os.path.dirname(dest), "home")
    os.makedirs(home, mode=0o700, exist_ok=True)
    await checkout(clone_url, ref, sha, dest, git_env(home, username, password), log_line)


async def fetch_proxy(proxy_url: str, ref: str, sha: str, dest: str, job_id: str,
                      secret: str, log_line: LogLine) -> None:
    """Check out ``sha`` through the hub's read-only git proxy with the job's secret."""
    await fetch(proxy_url, ref, sha, dest, job_id, secret, log_line)


async def fetch_ssh(ssh_url: str, ref: str, sha: str, dest: str, private_key: str,
                    known_hosts: str, log_line: LogLine) -> None:
    """Check out ``sha`` of ``ssh_url`` with a deploy key, deleting the key afterwards."""
    home = os.path.join(os.path.dirname(dest), "home")
    try:
        # on the loop (two tiny files): a key written by a thread could outlive a cancel
        env = ssh_env(home, private_key, known_hosts)
        await checkout(ssh_url, ref, sha, dest, env, log_line)
    finally:
        forget_key(home)


async def checkout(url: str, ref: str, sha: str, dest: str, env: dict[str, str],
                   log_line: LogLine) -> None:
    """A shallow fetch of exactly ``sha`` (falling back to ``ref``), checked out into
    the new directory ``dest``, whose git directory is :func:`gitsafe.git_dir` (``dest``
    itself has no ``.git``: what the build and the notebook get is the commit's files)."""
    gitdir = gitsafe.git_dir(dest)
    if await run_git(["init", "-q", "--bare", "--template=", gitdir], env, log_line):
        raise FetchFailed("git init failed")
    git = ["--git-dir", gitdir]
    # GitLab allows wants by sha (uploadpack.allowAnySHA1InWant)
    code = await run_git([*git, "fetch", "--depth", "1", "--no-tags", "--", url, sha],
                         env, log_line)
    if code:
        await log_line(f"Fetching the commit directly failed; fetching {ref} instead")
        code = await run_git([*git, "fetch", "--no-tags", "--", url, ref], env, log_line)
    if code:
        raise FetchFailed(f"git fetch of {url} failed (exit code {code}); see the log above")
    os.makedirs(dest, mode=0o755)
    if await run_git([*git, "--work-tree", dest, "checkout", "-q", "--detach", "-f", sha],
                     env, log_line):
        raise FetchFailed(f"commit {sha} is not in the fetched history of {ref}")
