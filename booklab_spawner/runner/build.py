"""Build a checkout into an image with repo2docker, one subprocess per build.

repo2docker's logger is global, so every build runs in its own process; its
``--json-logs`` lines keep their ``phase`` in the job's log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable

from ..exceptions import BuildFailed

log = logging.getLogger(__name__)
DRAIN = 10.0  # s the log may go on after the build process exited

LogLine = Callable[[str, str], Awaitable[None]]  # (message, phase)

# repo2docker is handed a local checkout: only the Local content provider may
# run, so no provider probes the network (Dataverse, Zenodo, ...).
R2D_CONFIG = """\
from repo2docker.contentproviders import Local
c.Repo2Docker.content_providers = [Local]
"""


def repo2docker_command(checkout: str, image: str, user_id: int, user_name: str,
                        config_file: str) -> list[str]:
    return [
        sys.executable, "-m", "booklab_spawner.runner.r2d_child",
        "--config", config_file,
        "--no-run", "--json-logs",
        "--user-id", str(user_id), "--user-name", user_name,
        "--image-name", image,
        checkout,
    ]


def parse_line(raw: str) -> tuple[str, str]:
    """(message, phase) from one repo2docker output line, JSON or plain."""
    raw = raw.rstrip()
    try:
        data = json.loads(raw)
    except ValueError:
        return raw, "building"
    if not isinstance(data, dict):
        return raw, "building"
    return str(data.get("message", "")).rstrip(), str(data.get("phase") or "building")


async def build(checkout: str, image: str, user_id: int, user_name: str, timeout: float,
                log_line: LogLine) -> None:
    """Run repo2docker; raise BuildFailed unless ``image`` exists afterwards."""
    with tempfile.TemporaryDirectory(prefix="booklab-r2d-") as tmp:
        config_file = os.path.join(tmp, "repo2docker_config.py")
        with open(config_file, "w") as f:
            f.write(R2D_CONFIG)
        cmd = repo2docker_command(checkout, image, user_id, user_name, config_file)
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd=tmp, env=_build_env(tmp),
        )
        try:
            await asyncio.wait_for(_follow(proc, log_line), timeout)
            code = await proc.wait()
        except asyncio.TimeoutError:
            await _terminate(proc)
            raise BuildFailed(
                f"The build took longer than the build timeout ({timeout:.0f} s) and was "
                "stopped: ask the hub's operator to raise runners.build_timeout, or make "
                "the environment smaller") from None
        except asyncio.CancelledError:
            await asyncio.shield(_terminate(proc))
            raise
    if code != 0:
        raise BuildFailed(f"repo2docker failed (exit code {code}); see the build log above")


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM: r2d_child then kills repo2docker and its docker build."""
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 20)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


async def _follow(proc: asyncio.subprocess.Process, log_line: LogLine) -> None:
    """The build's log until its output ends, or ``DRAIN`` s after the child exited
    (a process it left behind may hold the pipe: r2d_child kills its group)."""
    reader = asyncio.ensure_future(_stream(proc, log_line))
    exited = asyncio.ensure_future(proc.wait())
    try:
        await asyncio.wait({reader, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not reader.done():
            await asyncio.wait({reader}, timeout=DRAIN)
        if not reader.done():
            log.warning("the build's output was still open %g s after repo2docker exited",
                        DRAIN)
        else:
            reader.result()
    finally:
        reader.cancel()
        exited.cancel()


async def _stream(proc: asyncio.subprocess.Process, log_line: LogLine) -> None:
    assert proc.stdout is not None
    async for raw in proc.stdout:
        message, phase = parse_line(raw.decode(errors="replace"))
        if message:
            await log_line(message, phase)


def _build_env(home: str) -> dict[str, str]:
    # the runner's own environment (it may hold the runner token) is not passed on
    keep = ("PATH", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY",
            "LANG", "LC_ALL", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["HOME"] = home
    env["BOOKLAB_RUNNER_PID"] = str(os.getpid())
    keep_py = os.environ.get("PYTHONPATH")
    if keep_py:
        env["PYTHONPATH"] = keep_py
    return env
