"""Start, watch and remove notebook containers (docker-py, off the event loop)."""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from docker.errors import APIError, ImageNotFound, NotFound

import docker

from ..exceptions import LaunchFailed

T = TypeVar("T")

LABEL_PREFIX = "org.booklab."
LABEL_JOB = LABEL_PREFIX + "job"
LABEL_RUNNER = LABEL_PREFIX + "runner"


@dataclass
class Exit:
    code: int
    oom_killed: bool
    last_lines: list[str]


class Launcher:
    """docker-py wrapped so that every blocking call runs in a worker thread."""

    def __init__(self, runner_id: str, advertise_host: str,
                 client: docker.DockerClient | None = None):
        self.runner_id = runner_id
        self.advertise_host = advertise_host
        self.client = client or docker.from_env(version="auto")

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))

    async def image_exists(self, image: str) -> bool:
        try:
            await self._run(self.client.images.get, image)
            return True
        except ImageNotFound:
            return False

    async def start(self, job: dict[str, str], image: str, cmd: list[str],
                    env: dict[str, str], network: str, notebook_port: int,
                    user_id: int) -> tuple[str, str]:
        """Run the notebook container; return (container id, URL the hub can reach)."""
        host = self.advertise_host
        if network == "host":
            port = _free_port(host)
            bind_ip, ports = host, None
        else:
            port, bind_ip, ports = notebook_port, "0.0.0.0", {f"{notebook_port}/tcp": (host, None)}
        prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", "/")
        args = [*cmd, f"--ip={bind_ip}", f"--port={port}"]
        kwargs: dict[str, Any] = dict(
            image=image, command=args, name=f"booklab-{job['id']}", detach=True,
            labels=self.labels(job), user=str(user_id),
            environment={**env, "JUPYTERHUB_SERVICE_URL": f"http://{bind_ip}:{port}{prefix}"},
            network_mode=network, ports=ports,
        )
        if job.get("mem_limit"):
            kwargs["mem_limit"] = job["mem_limit"]
        if job.get("cpu_limit"):
            kwargs["nano_cpus"] = int(float(job["cpu_limit"]) * 1e9)
        try:
            container = await self._run(self.client.containers.run, **kwargs)
        except APIError as e:
            raise LaunchFailed(f"Docker refused to start the notebook: {e.explanation}") from None
        if network != "host":
            await self._run(container.reload)
            port = int(container.ports[f"{notebook_port}/tcp"][0]["HostPort"])
        return container.id, f"http://{host}:{port}"

    def labels(self, job: dict[str, str]) -> dict[str, str]:
        """Labels that identify the job; never secrets."""
        return {
            LABEL_JOB: job["id"], LABEL_RUNNER: self.runner_id,
            LABEL_PREFIX + "user": job.get("user", ""),
            LABEL_PREFIX + "server-name": job.get("server_name", ""),
            LABEL_PREFIX + "project": job.get("project", ""),
            LABEL_PREFIX + "sha": job.get("sha", ""),
        }

    async def wait_listening(self, container_id: str, url: str, timeout: float = 60) -> None:
        """Until the notebook accepts TCP connections; fail early if it exits."""
        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            if await self._run(_can_connect, host, int(port)):
                return
            status = await self.status(container_id)
            if status not in ("created", "running"):
                raise LaunchFailed(f"The notebook container stopped while starting ({status})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise LaunchFailed(f"The notebook did not listen on port {port} within {timeout:.0f} s")

    async def status(self, container_id: str) -> str:
        try:
            container = await self._run(self.client.containers.get, container_id)
        except NotFound:
            return "gone"
        return container.status

    async def wait_exit(self, container_id: str) -> Exit:
        """Block (in a thread) until the container exits; then its code, OOM flag, last lines."""
        try:
            container = await self._run(self.client.containers.get, container_id)
            result = await self._run(container.wait)
        except NotFound:
            return Exit(code=-1, oom_killed=False, last_lines=[])
        code = int(result.get("StatusCode", -1))
        try:  # the container may be removed meanwhile by a stop request
            await self._run(container.reload)
            logs = await self._run(container.logs, tail=20)
        except (NotFound, APIError):
            return Exit(code=code, oom_killed=False, last_lines=[])
        return Exit(
            code=code,
            oom_killed=bool(container.attrs.get("State", {}).get("OOMKilled")),
            last_lines=logs.decode(errors="replace").splitlines(),
        )

    async def remove(self, container_id: str, grace: int = 10) -> None:
        """Stop and remove; a container that is already gone is fine."""
        try:
            container = await self._run(self.client.containers.get, container_id)
            await self._run(container.stop, timeout=grace)
            await self._run(container.remove, force=True)
        except NotFound:
            return
        except APIError as e:
            if e.status_code == 409:  # removal already in progress
                return
            raise


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
