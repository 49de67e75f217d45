"""Start, watch and remove notebook containers (docker-py, off the event loop).

A container's secret environment never shows in ``docker inspect``: it is
created with the job's public variables only, and its command is
:data:`EXEC_ENTRY`, a few lines of the image's own Python that read one JSON
line from stdin -- the whole environment, API token included, and the server's
command -- and ``exec`` that command with it. The runner writes the line
through Docker's attach socket right after ``start`` (:func:`send_line`), as it
binds a warm container (:mod:`.warm`).

The repository's current content reaches the container at start: the
checkout (without ``.git``) is copied with ``put_archive`` into the image's
repository directory (``$REPO_DIR`` as repo2docker sets it, else the image's
working directory, else ``/home/<user>``) between ``create`` and ``start``,
owned by the notebook user. So an image built for an earlier commit with the
same environment serves a newer commit's notebooks.

Every container runs without capabilities and with ``no-new-privileges`` (a
setuid binary in the image gives no privilege), under a pids limit and a
memory and CPU limit (the job's, else the runner's defaults: see
:class:`ContainerPolicy`). In ``bridge`` mode it joins the runner's notebook
network (see :mod:`.network`).

Docker calls run in the launcher's own thread pool (``DOCKER_THREADS``), each
short; no call waits for a notebook's life: exits come from one Docker event
stream for all containers (:mod:`.exits`), so slots cost no thread.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from docker.errors import APIError, ImageNotFound, NotFound
from docker.types import DeviceRequest

import docker

from ..exceptions import LaunchFailed
from ..jobs import start_timeout_message
from .exits import ExitWatcher
from .network import NotebookNetwork

T = TypeVar("T")
log = logging.getLogger(__name__)

LABEL_PREFIX = "org.booklab."
LABEL_JOB = LABEL_PREFIX + "job"
LABEL_RUNNER = LABEL_PREFIX + "runner"
LABEL_WARM = LABEL_PREFIX + "warm"  # a warm container (runner/warm.py): no job label
LAST_LINES = 20  # lines of a container's output kept when it exits
READY_EVERY = 0.005  # s between connects while a notebook server starts
# threads for docker-py calls, whatever the slots: every call is short (the longest is a
# stop's grace period); the Docker client keeps one more connection, for the event stream
DOCKER_THREADS = 8


# reads the launch's environment and command from stdin, then becomes that command
EXEC_CODE = r"""
import json, os, sys
_line = sys.stdin.buffer.readline()
if not _line:
    sys.exit("booklab: no launch environment on stdin")
_bind = json.loads(_line)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
os.environ.update(_bind["env"])
os.execvp(_bind["argv"][0], _bind["argv"])
"""
# the interpreter of the image's jupyterhub-singleuser script (its #! line), else python3
PYTHON_OF_IMAGE = ('p=$(sed -n "1s/^#!//p" "$(command -v jupyterhub-singleuser)" 2>/dev/null); '
                   'exec ${p:-python3} -c "$1"')
EXEC_ENTRY = ["/bin/sh", "-c", PYTHON_OF_IMAGE, "booklab-exec", EXEC_CODE]

# what no notebook container may do, whatever its image or job says
HARDENING: dict[str, Any] = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"]}


@dataclass(frozen=True)
class ContainerPolicy:
    """The runner's limits for every container (``RunnerApp.pids_limit``,
    ``default_mem_limit``, ``default_cpu_limit``); 0 means none."""

    pids_limit: int = 1024
    default_mem_limit: int = 2 * 1024 ** 3
    default_cpu_limit: float = 1.0


@dataclass
class Exit:
    code: int
    oom_killed: bool
    last_lines: list[str]


class ContainerExited(LaunchFailed):
    """The notebook container ended before it listened (``exit`` tells how)."""

    def __init__(self, message: str, exit: Exit):
        super().__init__(message)
        self.exit = exit


class Launcher:
    """docker-py wrapped so that every blocking call runs in a worker thread."""

    def __init__(self, runner_id: str, advertise_host: str,
                 client: docker.DockerClient | None = None,
                 policy: ContainerPolicy | None = None,
                 network: NotebookNetwork | None = None):
        self.runner_id = runner_id
        self.advertise_host = advertise_host
        self.client = client or docker.from_env(version="auto",
                                                max_pool_size=DOCKER_THREADS + 1)
        self._pool = ThreadPoolExecutor(DOCKER_THREADS, thread_name_prefix="booklab-docker")
        self.exits = ExitWatcher(self.client, f"{LABEL_RUNNER}={runner_id}", self.status)
        self.policy = policy or ContainerPolicy()
        # bridge mode: the runner's isolated network (None: Docker's default bridge)
        self.network = network
        if network is not None and network.client is None:
            network.client = self.client

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        """Stop watching exits and end the Docker threads (runner shutdown)."""
        await self.exits.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def engine_info(self) -> dict[str, Any]:
        """``docker info`` of this runner's engine (CPUs, memory, runtimes)."""
        return await self._run(self.client.info)

    async def image_exists(self, image: str) -> bool:
        try:
            await self._run(self.client.images.get, image)
            return True
        except ImageNotFound:
            return False

    async def start(self, job: dict[str, str], image: str, cmd: list[str],
                    env: dict[str, str], network: str, notebook_port: int,
                    user_id: int, content: str | None = None,
                    secret_env: dict[str, str] | None = None) -> tuple[str, str]:
        """Run the notebook container; return (container id, URL the hub can reach).

        ``env`` is the job's public environment (in the container's config, as
        ``docker inspect`` shows it); ``secret_env`` reaches only the server's process,
        through stdin (see the module's doc). ``content``: a tar file (see :func:`pack`)
        copied into the repository directory before the notebook starts.
        """
        network, port, bind_ip, ports = await self.placement(network, notebook_port)
        public = {**env, "JUPYTERHUB_SERVICE_URL": service_url(env, bind_ip, port)}
        line = launch_line({**public, **(secret_env or {})}, cmd, bind_ip, port)
        kwargs: dict[str, Any] = dict(
            image=image, command=EXEC_ENTRY, stdin_open=True,
            name=f"booklab-{job['id']}", detach=True, labels=self.labels(job),
            user=str(user_id), network_mode=network, ports=ports, environment=public,
            **limits(job, self.policy), **devices(job), **HARDENING,
        )
        try:
            container = await self._run(self.client.containers.create, **kwargs)
            if content:
                await self.put_content(container, content)
            await self._run(container.start)
            await self._run(send_line, self.client, container.id, line)
        except (APIError, ImageNotFound) as e:
            raise LaunchFailed(f"Docker refused to start the notebook: {_explain(e)}") from None
        return container.id, await self.url_of(container, network, port)

    async def placement(self, network: str, notebook_port: int
                        ) -> tuple[str, int, str, dict[str, Any] | None]:
        """(network mode, port the server listens on, its --ip, ports to publish)."""
        host = self.advertise_host
        if network == "bridge" and self.network is not None:
            network = await self.network.ensure()
        if network == "host":
            return network, _free_port(host), host, None
        return network, notebook_port, "0.0.0.0", {f"{notebook_port}/tcp": (host, None)}

    async def url_of(self, container: Any, network: str, port: int) -> str:
        """The URL the hub reaches a started container at (its published port)."""
        if network != "host":
            await self._run(container.reload)
            port = int(container.ports[f"{port}/tcp"][0]["HostPort"])
        return f"http://{self.advertise_host}:{port}"

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking docker-py call in the launcher's Docker threads."""
        return await self._run(fn, *args, **kwargs)

    async def put_content(self, container: Any, content: str) -> None:
        target = repo_dir(container.attrs.get("Config") or {})
        data = await asyncio.to_thread(_read_bytes, content)
        try:
            await self._run(container.put_archive, target, data)
        except NotFound:
            raise LaunchFailed(f"The image has no directory {target} to put the "
                               "repository's files into") from None

    def labels(self, job: dict[str, str]) -> dict[str, str]:
        """Labels that identify the job; never secrets."""
        return {
            LABEL_JOB: job["id"], LABEL_RUNNER: self.runner_id,
            LABEL_PREFIX + "user": job.get("user", ""),
            LABEL_PREFIX + "server-name": job.get("server_name", ""),
            LABEL_PREFIX + "project": job.get("project", ""),
            LABEL_PREFIX + "sha": job.get("sha", ""),
        }

    async def wait_listening(self, container_id: str, url: str, timeout: float) -> None:
        """Until the notebook accepts TCP connections; fail as soon as it dies (the exit
        watcher's event), and after ``timeout`` seconds (the hub's
        ``container_start_timeout``, from conf).

        The check is a connect every ``READY_EVERY`` seconds on the event loop (a
        refused local connect costs microseconds, no thread and no Docker call), so
        the launch is reported within a few ms of the port opening. With a published
        port, Docker's proxy accepts connections on the host port before anything
        listens inside, so the check goes to the container's own address on the
        bridge network.
        """
        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        target = await self._inner_address(container_id, int(port)) or (host, int(port))
        died = asyncio.ensure_future(self.exits.wait(container_id))
        deadline = time.monotonic() + timeout
        try:
            while not await _connects(*target):
                if died.done():
                    info = await self.exit_info(container_id, died.result())
                    raise ContainerExited(exit_message(info, "while starting"), info)
                if time.monotonic() > deadline:
                    raise LaunchFailed(start_timeout_message(timeout))
                await asyncio.wait({died}, timeout=READY_EVERY)
        finally:
            died.cancel()

    async def _inner_address(self, container_id: str, host_port: int) -> tuple[str, int] | None:
        """(container IP, container port) behind a published ``host_port``, if any."""
        container = await self._run(self.client.containers.get, container_id)
        settings = container.attrs.get("NetworkSettings") or {}
        for spec, bindings in (settings.get("Ports") or {}).items():
            if any(str(b.get("HostPort")) == str(host_port) for b in bindings or []):
                ip = settings.get("IPAddress") or next(
                    (n.get("IPAddress") for n in (settings.get("Networks") or {}).values()
                     if n.get("IPAddress")), "")
                return (ip, int(spec.split("/")[0])) if ip else None
        return None

    async def exit_info(self, container_id: str, code: int | None = None) -> Exit:
        """Exit code, OOM flag and last lines of a container that has stopped;
        ``code`` (the exit code a die event told) is what is known once it is gone."""
        try:
            container = await self._run(self.client.containers.get, container_id)
            logs = await self._run(container.logs, tail=LAST_LINES)
        except (NotFound, APIError):
            return Exit(code=-1 if code is None else code, oom_killed=False, last_lines=[])
        state = container.attrs.get("State", {})
        return Exit(code=int(state.get("ExitCode", -1)), oom_killed=bool(state.get("OOMKilled")),
                    last_lines=logs.decode(errors="replace").splitlines())

    async def status(self, container_id: str) -> str:
        try:
            container = await self._run(self.client.containers.get, container_id)
        except NotFound:
            return "gone"
        return container.status

    async def wait_exit(self, container_id: str) -> Exit:
        """Until the container exits (no thread waits: see :mod:`.exits`); then its
        code, OOM flag and last lines, as far as they are known once a stop request
        removed it meanwhile."""
        code = await self.exits.wait(container_id)
        return await self.exit_info(container_id, code)

    async def remove(self, container_id: str, grace: int = 10) -> None:
        """Stop and remove; a container that is already gone is fine."""
        try:
            container = await self._run(self.client.containers.get, container_id)
            await self._run(container.stop, timeout=grace)
            await self._run(container.remove, force=True)
        except NotFound:
            return
        except APIError as e:
            if e.status_code != 409:
                raise
            await self._gone(container_id)  # removal already in progress: see it through

    async def _gone(self, container_id: str, timeout: int = 30) -> None:
        try:
            await self._run(self.client.api.wait, container_id, timeout=timeout,
                            condition="removed")
        except (NotFound, APIError):
            pass
        except Exception as e:  # a timeout: the engine is slow, the caller goes on
            log.warning("container %s still being removed: %s", container_id[:12], e)


    # -- what this runner left on the engine (reconcile, eviction) ------------
    async def containers_of(self, runner_id: str) -> list[tuple[str, str, str]]:
        """(container id, job id, status) of every container labelled for ``runner_id``."""
        found = await self._run(self.client.containers.list, all=True,
                                filters={"label": f"{LABEL_RUNNER}={runner_id}"})
        return [(c.id, c.labels.get(LABEL_JOB) or bound_job(c.name, c.labels), c.status)
                for c in found]

    async def images_with_prefix(self, prefix: str) -> dict[str, int]:
        """``image name -> size in bytes`` of the tagged images whose name starts with prefix."""
        if not prefix:
            return {}
        images = await self._run(self.client.images.list)
        return {tag: int(img.attrs.get("Size") or 0)
                for img in images for tag in img.tags if tag.startswith(prefix)}

    async def images_in_use(self) -> set[str]:
        """Image names of all containers on the engine (never evicted)."""
        found = await self._run(self.client.containers.list, all=True)
        return {c.attrs.get("Config", {}).get("Image", "") for c in found}

    async def remove_image(self, image: str) -> bool:
        """Untag/remove one image; False when Docker refuses (in use, or gone)."""
        try:
            await self._run(self.client.images.remove, image)
            return True
        except ImageNotFound:
            return True
        except APIError as e:
            if e.status_code == 409:
                return False
            raise


def service_url(env: dict[str, str], bind_ip: str, port: int) -> str:
    """``JUPYTERHUB_SERVICE_URL``: where the server listens, under its prefix."""
    return f"http://{bind_ip}:{port}{env.get('JUPYTERHUB_SERVICE_PREFIX', '/')}"


def launch_line(env: dict[str, str], cmd: list[str], bind_ip: str, port: int) -> bytes:
    """The one JSON line a container's entry program reads from stdin (cold:
    :data:`EXEC_ENTRY`; warm: ``warm.ENTRY``): the whole environment, with the
    service URL, and the server's command with ``--ip``/``--port``."""
    payload = {"env": {**env, "JUPYTERHUB_SERVICE_URL": service_url(env, bind_ip, port)},
               "argv": [*cmd, f"--ip={bind_ip}", f"--port={port}"]}
    return json.dumps(payload).encode() + b"\n"


def send_line(client: Any, container_id: str, data: bytes) -> None:
    """Write ``data`` to a running container's stdin (Docker's attach socket)."""
    sock = client.api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
    try:
        getattr(sock, "_sock", sock).sendall(data)
    finally:
        sock.close()


def bound_job(name: str, labels: dict[str, str]) -> str:
    """The job a warm container was bound to: the runner renames it ``booklab-<job id>``
    when it binds it (labels cannot change); "" for an unbound one (``booklab-warm-…``)."""
    if LABEL_WARM not in labels or not name.startswith("booklab-"):
        return ""
    rest = name[len("booklab-"):]
    return "" if rest.startswith("warm-") else rest


def repo_dir(config: dict[str, Any]) -> str:
    """Where the repository lives in an image (repo2docker's ``REPO_DIR``, else the
    working directory, else the user's home)."""
    for item in config.get("Env") or []:
        if item.startswith("REPO_DIR="):
            return item.split("=", 1)[1]
    workdir = config.get("WorkingDir") or ""
    if workdir not in ("", "/"):
        return workdir
    user = config.get("User") or ""
    return f"/home/{user}" if user and not user.isdigit() else "/home/jovyan"


def pack(checkout: str, dest: str, user_id: int) -> str:
    """Write ``checkout`` (without ``.git``) as a tar owned by ``user_id``; returns dest."""
    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if info.name == ".git" or info.name.startswith(".git/"):
            return None
        info.uid = info.gid = user_id
        info.uname = info.gname = ""
        return info

    with tarfile.open(dest, "w") as tar:
        for name in sorted(os.listdir(checkout)):
            tar.add(os.path.join(checkout, name), arcname=name, filter=owned)
    return dest


def limits(job: dict[str, str], policy: ContainerPolicy = ContainerPolicy()) -> dict[str, Any]:
    """docker-py keyword arguments for the pids, memory and CPU limits: the job's
    (the hub's ``mem_limit``/``cpu_limit``), else the runner's defaults."""
    out: dict[str, Any] = {}
    if policy.pids_limit > 0:
        out["pids_limit"] = policy.pids_limit
    mem: str | int = job.get("mem_limit") or ""
    if mem in ("", "0"):
        mem = policy.default_mem_limit
    if mem:
        out["mem_limit"] = mem
        out["memswap_limit"] = mem  # no swap beyond the limit: OOM is OOM
    try:
        cpu = float(job.get("cpu_limit") or 0) or policy.default_cpu_limit
    except ValueError:
        raise LaunchFailed(f"Invalid cpu_limit {job.get('cpu_limit', '')[:40]!r}") from None
    if cpu > 0:
        out["nano_cpus"] = int(cpu * 1e9)
    return out


def devices(job: dict[str, str]) -> dict[str, Any]:
    """docker-py keyword arguments for the job's GPU request (its launch profile's
    ``gpus``: a count or "all"), as ``docker run --gpus`` sends it: a device request
    for the ``gpu`` capability (count -1 is Docker's "all")."""
    gpus = job.get("gpus") or ""
    if not gpus:
        return {}
    if gpus != "all" and not (gpus.isdigit() and 0 < int(gpus) <= 64):
        raise LaunchFailed(f"Invalid GPU request {gpus[:40]!r}")
    count = -1 if gpus == "all" else int(gpus)
    return {"device_requests": [DeviceRequest(count=count, capabilities=[["gpu"]])]}


def exit_message(info: Exit, when: str = "") -> str:
    """What the user reads when a notebook container ended by itself."""
    if info.oom_killed:
        return ("The notebook ran out of memory and was killed "
                "(the container's memory limit was reached)")
    suffix = f" {when}" if when else ""
    return f"The notebook server exited with code {info.code}{suffix}"


def _explain(e: Exception) -> str:
    return getattr(e, "explanation", None) or str(e)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def _connects(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True
