"""One job on a runner: fetch, build, start, watch, stop."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from typing import TYPE_CHECKING

from .. import jobs as J
from ..exceptions import BooklabError, InvalidTransition, JobNotFound
from ..scrub import Scrubber
from . import build, fetch

if TYPE_CHECKING:
    from .app import Runner

log = logging.getLogger(__name__)


class Aborted(Exception):
    """The job was stopped or taken away while this runner worked on it."""


class JobWorker:
    def __init__(self, runner: Runner, job_id: str):
        self.runner = runner
        self.job_id = job_id
        self.store = runner.store
        self.scrub = Scrubber()
        self.container_id: str | None = None
        self.state = J.CLAIMED

    async def say(self, message: str, phase: str = "") -> None:
        """Append a (scrubbed) line to the job's log."""
        await self.store.log(self.job_id, self.scrub(message), phase or self.state)

    async def step(self, state: str, message: str, **fields: str) -> None:
        try:
            await self.store.transition(self.job_id, state, self.scrub(message),
                                        allowed_from=[self.state], **fields)
        except (InvalidTransition, JobNotFound) as e:
            raise Aborted(str(e)) from None
        self.state = state

    async def run(self) -> None:
        try:
            await self._run()
        except Aborted as e:
            log.info("job %s aborted: %s", self.job_id, e)
            await self._finish_stop()
        except asyncio.CancelledError:
            await asyncio.shield(self._finish_stop())
            raise
        except BooklabError as e:
            await self._fail(str(e))
        except Exception:
            log.exception("job %s: unexpected error", self.job_id)
            await self._fail(f"Internal error on runner {self.runner.runner_id}; "
                             "the runner's own log has the details")
        finally:
            await self.store.release(self.runner.runner_id, self.job_id)

    async def _run(self) -> None:
        job = await self.store.get(self.job_id)
        secrets = self.runner.box.decrypt(await self.store.secrets(self.job_id) or "")
        clone = secrets["clone"]
        self.scrub.add_basic_auth(clone["username"], clone["password"])
        for value in secrets["env"].values():
            self.scrub.add(value)
        conf = await self.runner.conf()
        image = await self._fetch_and_build(job, clone, conf)
        await self.step(J.STARTING, f"Starting the notebook from {image}")
        env = {**json.loads(job.get("env") or "{}"), **secrets["env"]}
        cmd = json.loads(job.get("cmd") or '["jupyterhub-singleuser"]')
        cmd += json.loads(job.get("args") or "[]")
        launcher = self.runner.launcher
        self.container_id, url = await launcher.start(
            job, image, cmd, env, conf.network, conf.notebook_port, conf.user_id)
        await launcher.wait_listening(self.container_id, url)
        await self.step(J.RUNNING, f"Notebook server is listening at {url}", url=url,
                        container=self.container_id, image=image)
        await self._watch()

    async def _fetch_and_build(self, job: dict[str, str], clone: dict, conf) -> str:
        sha, project = job["sha"], job["project"]
        await self.step(J.FETCHING, f"Fetching {project} at {job['ref']} ({sha[:12]})")
        url = fetch.check_clone_url(job["clone_url"], conf.gitlab_url)
        image = build.image_name(conf.image_prefix, job["project_id"], project, sha)
        workdir = tempfile.mkdtemp(prefix="booklab-job-", dir=self.runner.work_dir)
        try:
            checkout = f"{workdir}/repo"
            await fetch.fetch(url, job["ref"], sha, checkout, clone["username"],
                              clone["password"], self.say)
            await self.step(J.BUILDING, f"Building image {image}")
            if await self.runner.launcher.image_exists(image):
                await self.say(f"Image {image} already exists: no build needed")
            else:
                await build.build(checkout, image, conf.user_id, conf.user_name,
                                  conf.build_timeout, self._build_line)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return image

    async def _build_line(self, message: str, phase: str) -> None:
        await self.say(message, phase)

    async def _watch(self) -> None:
        """Wait for the container to exit by itself (a stop request also ends it)."""
        assert self.container_id
        result = await self.runner.launcher.wait_exit(self.container_id)
        current = await self.store.state(self.job_id)
        if current != J.RUNNING:
            raise Aborted(f"container ended while the job is {current}")
        for line in result.last_lines:
            await self.say(line, "running")
        await self.runner.launcher.remove(self.container_id)
        if result.oom_killed:
            await self._fail("The notebook ran out of memory and was killed "
                             "(the container's memory limit was reached)", result.code)
        elif result.code:
            await self._fail(f"The notebook server exited with code {result.code}", result.code)
        else:
            await self.store.transition(self.job_id, J.STOPPED, "The notebook server exited",
                                        allowed_from=[J.RUNNING], exit_code="0")

    async def stop(self) -> None:
        """Handle a stop request: end the container; the pipeline then finishes."""
        if self.container_id:
            await self.runner.launcher.remove(self.container_id)

    async def _finish_stop(self) -> None:
        if self.container_id:
            await self.runner.launcher.remove(self.container_id)
        try:
            await self.store.transition(self.job_id, J.STOPPED, "Stopped",
                                        allowed_from=[J.STOPPING], exit_code="0")
        except (InvalidTransition, JobNotFound):
            pass

    async def _fail(self, reason: str, code: int = 1) -> None:
        reason = self.scrub(reason)
        if self.container_id:
            await self.runner.launcher.remove(self.container_id)
        try:
            await self.store.transition(self.job_id, J.FAILED, reason, error=reason,
                                        exit_code=str(code or 1))
        except (InvalidTransition, JobNotFound):
            pass
