"""BooklabSpawner: JupyterHub's side of a launch.

``start()`` checks the launch against GitLab with the user's own token
(resolving the ref to a commit sha is the permission check), writes a job to
Redis and waits for a runner to report where the notebook listens. The
runner does the rest (see :mod:`booklab_spawner.runner`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jupyterhub.spawner import Spawner
from traitlets import Float, Integer, Unicode, default, validate

from . import conf as confmod
from . import validate as check
from .crypto import SecretBox, check_runner_token
from .exceptions import BooklabError, GitLabError, InvalidInput, InvalidTransition
from .gitlab import GitLabClient
from .jobs import (
    ACTIVE,
    FAILED,
    PROGRESS,
    QUEUED,
    RUNNING,
    STOPPED,
    STOPPING,
    TERMINAL,
    JobStore,
    new_job_id,
)
from .keys import DEFAULT_PREFIX, Keys
from .redis_client import get_redis
from .runners import is_alive

# environment variables that carry secrets: they travel encrypted in token:<job>
_SECRET_ENV_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "KEY")


class SpawnFailed(BooklabError):
    """A launch failed for a reason the user can read on the spawn page."""

    def __init__(self, message: str):
        super().__init__(message)
        self.jupyterhub_message = message


class BooklabSpawner(Spawner):
    """Runs each notebook server on a Booklab runner, from a GitLab repository."""

    redis_url = Unicode(
        config=True,
        help="""Redis URL shared with the runners, e.g. redis://redis:6379/0.

        Defaults to $BOOKLAB_REDIS_URL, else redis://127.0.0.1:6379/0.""",
    )

    @default("redis_url")
    def _default_redis_url(self) -> str:
        return os.environ.get("BOOKLAB_REDIS_URL", "redis://127.0.0.1:6379/0")

    key_prefix = Unicode(
        DEFAULT_PREFIX, config=True,
        help="Prefix of every Redis key Booklab writes (the runners must use the same).",
    )

    @validate("key_prefix")
    def _check_prefix(self, proposal: dict) -> str:
        Keys(proposal.value)  # raises on an invalid prefix
        return proposal.value

    runner_token = Unicode(
        config=True,
        help="""Secret shared with the runners (at least 32 characters); job secrets
        are encrypted with a key derived from it. Defaults to $BOOKLAB_RUNNER_TOKEN.""",
    )

    @default("runner_token")
    def _default_runner_token(self) -> str:
        return os.environ.get("BOOKLAB_RUNNER_TOKEN", "")

    gitlab_url = Unicode(
        config=True,
        help="Base URL of the GitLab instance, e.g. https://gitlab.example.org. "
             "Defaults to $GITLAB_URL.",
    )

    @default("gitlab_url")
    def _default_gitlab_url(self) -> str:
        return os.environ.get("GITLAB_URL", "")

    runner_network = Unicode(
        "bridge", config=True,
        help="""How runners connect notebook containers: 'bridge' publishes the notebook's
        port on the runner's advertised address; 'host' shares the runner's network
        (single-machine setups and tests).""",
    )

    image_prefix = Unicode(
        "booklab/", config=True,
        help="Prefix of the image names runners build, e.g. 'booklab/'.",
    )

    build_timeout = Integer(
        3600, config=True, help="Seconds a runner lets one repo2docker build take.",
    )

    stop_timeout = Float(
        60, config=True,
        help="Seconds stop() waits for the runner to confirm the container is gone.",
    )

    job_id = Unicode(allow_none=True, default_value=None)

    @default("start_timeout")
    def _default_start_timeout(self) -> int:
        # covers the queue, a repo2docker build and the container start
        return 3600

    @default("http_timeout")
    def _default_http_timeout(self) -> int:
        return 120

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return ["jupyterhub-singleuser"]

    # -- helpers ----------------------------------------------------------------
    @property
    def keys(self) -> Keys:
        return Keys(self.key_prefix)

    @property
    def store(self) -> JobStore:
        return JobStore(get_redis(self.redis_url), self.keys)

    def runner_conf(self) -> confmod.RunnerConf:
        return confmod.RunnerConf(
            gitlab_url=self.gitlab_url, network=self.runner_network,
            image_prefix=self.image_prefix, build_timeout=self.build_timeout,
        ).validate()

    # -- state --------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.job_id:
            state["job_id"] = self.job_id
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.job_id = state.get("job_id")

    def clear_state(self) -> None:
        super().clear_state()
        self.job_id = None
        self._job_event = None

    # -- options ------------------------------------------------------------------
    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, str]:
        return {name: formdata[name][0] for name in ("project", "ref") if formdata.get(name)}

    def _launch_options(self) -> tuple[str, str]:
        opts = self.user_options or {}
        try:
            return check.project_path(opts.get("project")), check.ref(opts.get("ref") or "HEAD")
        except InvalidInput as e:
            raise SpawnFailed(str(e)) from None

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> str:
        project_path, ref = self._launch_options()
        token = await self._gitlab_token()
        gitlab = GitLabClient(self.gitlab_url, token)
        try:
            project = await gitlab.project(project_path)
            commit = await gitlab.commit(project["id"], ref)
        except GitLabError as e:
            raise SpawnFailed(str(e)) from None
        sha = check.commit_sha(commit["id"])
        self.log.info("Launching %s@%s (%s) for %s", project_path, ref, sha[:12], self.user.name)
        job_id = await self._create_job(project, ref, sha, token)
        return await self._wait_until_running(job_id)

    async def _gitlab_token(self) -> str:
        auth_state = await self.user.get_auth_state() or {}
        token = auth_state.get("access_token")
        if not token:
            raise SpawnFailed("Booklab has no GitLab token for you: log out and log in again")
        return token

    async def _create_job(self, project: dict, ref: str, sha: str, token: str) -> str:
        check_runner_token(self.runner_token)
        await confmod.publish(get_redis(self.redis_url), self.keys, self.runner_conf())
        job_id = new_job_id()
        env, secret_env = self._split_env(self.get_env())
        blob = SecretBox(self.runner_token).encrypt({
            "env": secret_env,
            "clone": {"method": "token", "username": "oauth2", "password": token},
        })
        fields = {
            "user": self.user.name, "server_name": self.name,
            "project": project["path_with_namespace"], "project_id": str(project["id"]),
            "ref": ref, "sha": sha, "clone_url": project["http_url_to_repo"],
            "cmd": self.cmd, "args": self.get_args(), "env": env,
            "mem_limit": str(self.mem_limit or ""), "cpu_limit": str(self.cpu_limit or ""),
        }
        await self.store.create(job_id, fields, blob)
        self.job_id = job_id
        self._job_created().set()
        self.log.info("Queued job %s for %s", job_id, self._log_name)
        return job_id

    def _split_env(self, env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        public, secret = {}, {}
        for name, value in env.items():
            target = secret if any(m in name.upper() for m in _SECRET_ENV_MARKERS) else public
            target[name] = value
        return public, secret

    async def _wait_until_running(self, job_id: str) -> str:
        async for entry in self.store.follow_log(job_id, until=(RUNNING, *TERMINAL)):
            if entry is None or entry.kind != "state":
                continue
            if entry.state == RUNNING:
                job = await self.store.get(job_id)
                return job["url"]
            if entry.state in TERMINAL:
                job = await self.store.get(job_id)
                raise SpawnFailed(job.get("error") or entry.message or "The launch was stopped")
        raise SpawnFailed("The job log ended unexpectedly")  # pragma: no cover

    async def poll(self) -> int | None:
        if not self.job_id:
            return 0
        store = self.store
        job = await store.redis.hgetall(self.keys.job(self.job_id))
        state = job.get("state")
        if state is None or state == STOPPED:
            return 0
        if state == FAILED:
            return int(job.get("exit_code") or 1)
        runner = job.get("runner", "")
        if state in ACTIVE + (STOPPING,) and not await is_alive(store.redis, self.keys, runner):
            await self._fail(f"Runner {runner} stopped answering (no heartbeat)")
            return 1
        return None

    async def _fail(self, reason: str) -> None:
        try:
            await self.store.transition(self.job_id, FAILED, reason, error=reason)
        except InvalidTransition:
            pass

    async def stop(self, now: bool = False) -> None:
        if not self.job_id:
            return
        store = self.store
        job_id = self.job_id
        state = await store.state(job_id)
        if state == QUEUED and await store.cancel_queued(job_id):
            return
        if state is None or state in TERMINAL:
            return
        try:
            await store.transition(job_id, STOPPING, "Stopping", allowed_from=ACTIVE)
        except InvalidTransition:
            pass  # already stopping, or finished meanwhile
        job = await store.get(job_id)
        if job["state"] in TERMINAL:
            return
        await store.send_command(job["runner"], {"op": "stop", "job": job_id})
        try:
            await asyncio.wait_for(self._wait_stopped(job_id), self.stop_timeout)
        except asyncio.TimeoutError:
            await self._fail(f"Runner {job['runner']} did not confirm the stop "
                             f"within {self.stop_timeout:.0f} s")

    async def _wait_stopped(self, job_id: str) -> None:
        async for entry in self.store.follow_log(job_id, block_ms=2000):
            if entry is None:
                job = await self.store.get(job_id)
                if job["state"] in TERMINAL:
                    return
                if not await is_alive(self.store.redis, self.keys, job.get("runner", "")):
                    await self._fail(f"Runner {job.get('runner')} is gone; container state unknown")
                    return

    async def progress(self):
        await self._job_created().wait()  # start() is still checking with GitLab
        state = QUEUED
        async for entry in self.store.follow_log(self.job_id, until=(RUNNING, *TERMINAL)):
            if entry is None:
                continue
            if entry.kind == "state":
                state = entry.state
            yield {"progress": PROGRESS.get(state, 99), "message": entry.message,
                   "phase": state}

    def _job_created(self) -> asyncio.Event:
        if getattr(self, "_job_event", None) is None:
            self._job_event = asyncio.Event()
            if self.job_id:
                self._job_event.set()
        return self._job_event

    @property
    def _log_name(self) -> str:
        return f"{self.user.name}:{self.name}" if self.name else self.user.name
