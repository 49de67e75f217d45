"""BooklabSpawner: JupyterHub's side of a launch.

``start()`` checks the launch against GitLab with the user's own token
(resolving the ref to a commit sha is the permission check, on every launch),
prepares a clone credential (a fresh read-only deploy key, or the user's token),
writes a job to Redis and follows its log until a runner reports where the
notebook listens. Each phase — queue, build, container start — has its own
timeout whose message says which one ran out and why. ``stop()`` asks the
runner to stop and waits for its confirmation, then deletes the deploy key.
"""

from __future__ import annotations

import asyncio
import html
import os
import time
from collections.abc import Awaitable
from typing import Any

from jupyterhub.spawner import Spawner
from traitlets import Any as AnyTrait
from traitlets import Float, Unicode, default, validate

from . import deploykeys
from . import runnerconf as confmod
from . import validate as check
from .credentials import CloneCredentials, SpawnFailed, registered_host, url_on_host
from .crypto import Signer, check_runner_token
from .exceptions import GitLabError, InvalidInput
from .gitlab_api import GitLabClient
from .hub_restart import FollowAfterRestart
from .jobrequest import JobRequest
from .jobs import (
    ACTIVE,
    BUILDING,
    CLAIMED,
    EARLY,
    FAILED,
    FETCHING,
    PROGRESS,
    QUEUED,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    TERMINAL,
    JobStore,
    new_job_id,
    start_timeout_message,
)
from .keys import DEFAULT_PREFIX, DEFAULT_PROFILE, Keys
from .launch_events import LaunchEvents
from .profile_choice import NO_RUNNER_ALIVE, ProfileChoice
from .profiles import Profile
from .redis_client import default_url, get_redis
from .registry import alive_runners, is_alive
from .runner_settings import RunnerSettings

# environment variables that carry secrets: they travel encrypted in token:<job>
_SECRET_ENV_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "KEY")
AUTOSAVE_RETRY = 2.0  # s before a failed autosave is tried again (then doubling)
# which timeout watches a job in each state
_PHASE_OF = {QUEUED: "queue", CLAIMED: "build", FETCHING: "build", BUILDING: "build",
             STARTING: "start"}
_OPTIONS_FORM = """
<label for="booklab-project">GitLab project</label>
<input class="form-control" id="booklab-project" name="project" placeholder="group/project"
       required maxlength="1020">
<label for="booklab-ref">Branch, tag or commit</label>
<input class="form-control" id="booklab-ref" name="ref" value="HEAD" maxlength="255">
"""


def _options_checked_in_start(spawner: Spawner, user_options: dict) -> None:
    """user_options are validated in start(), where a refusal has a clear message (and
    JupyterHub would log a traceback for an error raised here)."""


class BooklabSpawner(LaunchEvents, CloneCredentials, FollowAfterRestart, ProfileChoice,
                     RunnerSettings, Spawner):
    """Runs each notebook server on a Booklab runner, from a GitLab repository."""

    redis_url = Unicode(
        config=True,
        help="""Redis URL shared with the runners, e.g. redis://redis:6379/0.

        Defaults to $BOOKLAB_REDIS_URL, else redis://127.0.0.1:6379/0.""",
    )

    @default("redis_url")
    def _default_redis_url(self) -> str:
        return default_url()

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

    # GitLab's URL and the clone method belong to the authenticator, which needs them
    # first (OAuth endpoints, the scopes asked for); the spawner reads them from there.
    @property
    def gitlab_url(self) -> str:
        """Base URL of GitLab: ``BooklabGitLabAuthenticator.gitlab_url``."""
        return getattr(self.authenticator, "gitlab_url", "") or ""

    @property
    def clone_method(self) -> str:
        """How runners get the repository: ``BooklabGitLabAuthenticator.clone_method``."""
        return getattr(self.authenticator, "clone_method", "auto")

    stop_timeout = Float(
        60, config=True,
        help="Seconds stop() waits for the runner to confirm the container is gone.",
    )

    autosave_hook = AnyTrait(None, allow_none=True, config=True, help="""A coroutine function
        ``hook(spawner)`` awaited before a running server is stopped: Booklab's autosave
        (``booklab_hub.autosave.autosave``, set when config.yml says ``save.autosave``).
        The stop waits for it at most ``autosave_timeout`` seconds; its failure is logged
        and written to the job's log, and the stop goes on.""")
    autosave_timeout = Float(120, config=True, help="""Seconds a stop waits for the
        autosave of the server's changes.""")
    job_id = Unicode(allow_none=True, default_value=None)

    @default("start_timeout")
    def _default_start_timeout(self) -> int:
        # JupyterHub's own limit must outlast ours, whose messages say which phase hung
        return (self.queue_timeout + self.build_timeout + self.build_grace
                + self.container_start_timeout + 60)

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
        self._job_created().clear()  # the same event: a page waiting on it keeps waiting

    # -- options ------------------------------------------------------------------
    @default("options_form")
    def _default_options_form(self) -> str:
        # the plain form behind /hub/spawn; Booklab's picker pages link here with options
        profiles = self.launch_profiles
        if len(profiles) < 2:
            return _OPTIONS_FORM
        options = "".join(f'<option value="{p.name}">{html.escape(p.name)}'
                          f'{" — " + html.escape(p.description) if p.description else ""}'
                          "</option>" for p in profiles)
        return (_OPTIONS_FORM + '<label for="booklab-profile">Launch profile</label>\n'
                f'<select class="form-select" id="booklab-profile" name="profile">{options}'
                "</select>\n")

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return _options_checked_in_start

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, str]:
        return {name: formdata[name][0] for name in ("project", "ref", "profile")
                if formdata.get(name)}

    def options_from_query(self, query_data: dict[str, list[str]]) -> dict[str, str]:
        # /hub/spawn?opt-project=... would launch from a GET, which any other site can
        # make a logged-in browser send: refused, so the hub shows its form (a POST
        # with the XSRF token) instead. Launch links confirm the same way.
        raise SpawnFailed("Launch from the Booklab page or confirm with this form", 400)

    def _launch_options(self) -> tuple[str, str]:
        opts = self.user_options or {}
        try:
            return check.project_path(opts.get("project")), check.ref(opts.get("ref") or "HEAD")
        except InvalidInput as e:
            raise SpawnFailed(str(e), 400) from None

    # -- start ----------------------------------------------------------------------
    async def start(self) -> str:
        project_path, ref = self._launch_options()
        profile = await self.choose_profile(self.user_options or {})
        token, scopes = await self._gitlab_token()
        try:
            gitlab = GitLabClient(self.gitlab_url, token)
        except GitLabError as e:  # no usable gitlab.url: the operator's to fix
            raise SpawnFailed(str(e), 500) from None
        project, sha = await self._resolve(gitlab, project_path, ref)
        job_id = new_job_id()
        clone, key_id = await self._clone_credential(gitlab, project, job_id, token, scopes)
        try:
            await self._create_job(job_id, project, ref, sha, clone, key_id, profile)
        except BaseException:
            if key_id:
                await deploykeys.remove(gitlab, project["id"], key_id)
            raise
        try:
            why = await self.unserved(profile.name)
            # it waits, and the person reads why (for the default profile with no runner
            # alive the picker says so already, and the queue's messages follow)
            if why and not (profile.name == DEFAULT_PROFILE and why == NO_RUNNER_ALIVE):
                await self.store.log(job_id, f"Waiting for a runner: {why}; the launch waits "
                                     f"up to {self.queue_timeout} s", QUEUED)
            return await self._wait_until_running(job_id)
        except Exception:
            # JupyterHub calls stop() only for a server poll() says is running
            await self._release_deploy_key()
            raise

    async def _resolve(self, gitlab: GitLabClient, project_path: str,
                       ref: str) -> tuple[dict, str]:
        """The permission check: the project and the ref's commit, read as the user,
        both at once (two round trips to GitLab in the time of one)."""
        try:
            project, commit = await _both(gitlab.project(project_path),
                                          gitlab.commit(project_path, ref))
            sha = check.commit_sha(commit.get("id"))
        except GitLabError as e:
            status = {401: 403, 403: 403, 404: 400, 0: 502}.get(e.status, 502)
            raise SpawnFailed(str(e), status) from None
        except InvalidInput as e:
            raise SpawnFailed(f"{e}: try again, or tell the hub's operator", 502) from None
        self.log.info("Launching %s@%s (%s) for %s", project_path, ref, sha[:12], self._log_name)
        return project, sha

    async def _create_job(self, job_id: str, project: dict, ref: str, sha: str,
                          clone: dict, key_id: int | None, profile: Profile) -> None:
        check_runner_token(self.runner_token)
        signer = Signer(self.runner_token)
        await confmod.publish(get_redis(self.redis_url), self.keys, self.runner_conf(), signer)
        env, secret_env = self._split_env(self.get_env())
        request = JobRequest(
            user=self.user.name, server_name=self.name,
            project=project["path_with_namespace"], project_id=str(project["id"]),
            ref=ref, sha=sha, clone_url=project["http_url_to_repo"],
            ssh_url=project.get("ssh_url_to_repo") or "", clone_method=clone["method"],
            deploy_key_id=str(key_id or ""), cmd=list(self.cmd), args=self.get_args(),
            env=env, mem_limit=profile.mem_limit or str(self.mem_limit or ""),
            cpu_limit=str(profile.cpu_limit or self.cpu_limit or ""),
            profile=profile.name, labels=profile.labels, gpus=profile.gpus)
        # signed and sealed: runners act only on what the hub wrote (docs/protocol.md)
        record, blob = request.sealed(job_id, self.runner_token,
                                      {"env": secret_env, "clone": clone})
        await self.store.create(job_id, record, blob)
        self.job_id = job_id
        self._launched_here = job_id  # this hub process follows it (see poll)
        self._save_state()
        self._job_created().set()
        self.log.info("Queued job %s for %s (clone: %s)", job_id, self._log_name,
                      clone["method"])

    def _save_state(self) -> None:
        """Write the job id to the hub's database now: JupyterHub saves a spawner's
        state only once start() returns, and a hub restarted during the launch must
        know the job (poll then ends it) rather than leave it to start a notebook
        nobody owns."""
        if self.orm_spawner is not None:
            self.orm_spawner.state = self.get_state()
            self.user.db.commit()

    def _split_env(self, env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        public, secret = {}, {}
        for name, value in env.items():
            target = secret if any(m in name.upper() for m in _SECRET_ENV_MARKERS) else public
            target[name] = value
        return public, secret

    # -- waiting, with one timeout per phase ------------------------------------------
    async def _wait_until_running(self, job_id: str) -> str:
        phase, since = "queue", time.monotonic()
        async for entry in self.store.follow_log(job_id, block_ms=1000,
                                                 until=(RUNNING, *TERMINAL)):
            if entry is None:
                await self._check_runner_alive(job_id)
            elif entry.kind == "state":
                if entry.state not in (QUEUED, CLAIMED, FETCHING):
                    self._fetch_over(job_id)
                elif entry.state == QUEUED and getattr(self, "_fetch_closed", None) == job_id:
                    await self._renew_clone(job_id)  # handed back after its fetch
                if entry.state == RUNNING:
                    return await self._notebook_url(job_id)
                if entry.state in TERMINAL:
                    job = await self.store.get(job_id)
                    raise SpawnFailed(job.get("error") or entry.message or "The launch was "
                                      "stopped")
                if _PHASE_OF.get(entry.state, phase) != phase:
                    phase, since = _PHASE_OF[entry.state], time.monotonic()
            if time.monotonic() - since > self._phase_limit(phase):
                await self._time_out(job_id, phase)
        raise SpawnFailed("The job log ended unexpectedly")  # pragma: no cover

    async def _notebook_url(self, job_id: str) -> str:
        """The URL the runner reported, if a registered runner signed it for this job
        and it is on that runner's advertised host; otherwise the launch fails."""
        job = await self.store.get(job_id)
        url, runner = job.get("url", ""), job.get("runner", "")
        signed = Signer(self.runner_token).url_is_signed(job_id, runner, url,
                                                         job.get("url_sig", ""))
        host = await registered_host(self.store.redis, self.keys, runner) if runner else None
        if not signed or host is None or not url_on_host(url, host):
            why = ("not signed by a runner" if not signed else
                   f"runner {runner!r} is not registered" if host is None else
                   f"not on runner {runner}'s advertised host {host}")
            self.log.warning("Job %s reported a notebook URL that is %s: refusing it",
                             job_id, why)
            msg = ("The runner's report for this launch failed a signature or host check "
                   "(Redis may have been tampered with): ask the hub's operator to check")
            await self._abort(job_id, msg)
            raise SpawnFailed(msg, 502)
        return url

    def _phase_limit(self, phase: str) -> float:
        return {"queue": self.queue_timeout, "build": self.build_timeout + self.build_grace,
                "start": self.container_start_timeout}[phase]

    async def _check_runner_alive(self, job_id: str) -> None:
        """A runner that died before ``running`` hands the job back to the queue (the
        reap every runner does, done here at once), and the launch waits for another
        runner within the queue timeout; a job that cannot go back fails."""
        job = await self.store.get(job_id)
        runner = job.get("runner", "")
        if job["state"] not in ACTIVE or await is_alive(self.store.redis, self.keys, runner):
            return
        outcome = await self.store.reap(runner, job_id, f"Runner {runner} stopped answering "
                                        "(no heartbeat); the job went back to the queue")
        if outcome in ("requeued", "moved", "alive"):
            self.log.info("Job %s of %s: runner %s is gone, job %s", job_id, self._log_name,
                          runner, outcome)
            return
        msg = (f"Runner {runner} stopped answering (no heartbeat) during the launch: "
               "try again; another runner will take it")
        await self._abort(job_id, msg)
        raise SpawnFailed(msg, 503)

    async def _time_out(self, job_id: str, phase: str) -> None:
        if phase == "queue":
            alive = await alive_runners(self.store.redis, self.keys)
            unserved = await self.unserved((await self.store.find(job_id)).get("profile", ""))
            why = ("no runner is alive: ask the hub's operator to start booklab-runner"
                   if not alive else f"{unserved}: ask the hub's operator" if unserved
                   else f"all {len(alive)} runners are busy: try again later")
            msg = f"No runner took the job within {self.queue_timeout} s — {why}"
        elif phase == "build":
            runner = (await self.store.find(job_id)).get("runner") or "?"
            msg = (f"Fetching and building the image ran out of time: runner {runner} did "
                   f"not report the end of the build within the build timeout "
                   f"({self.build_timeout} s) and {self.build_grace} s of grace: ask the "
                   "hub's operator to check the runner or raise runners.build_timeout, or "
                   "make the environment smaller")
        else:
            msg = start_timeout_message(self.container_start_timeout)
        self.log.warning("Job %s of %s: %s", job_id, self._log_name, msg)
        await self._abort(job_id, msg)
        raise SpawnFailed(msg, 504)

    async def _abort(self, job_id: str, reason: str) -> None:
        """Fail a job that has not reached `running`: off the queue, runner told to stop."""
        store = self.store
        await store.unqueue(job_id)
        if not await store.fail(job_id, reason):
            return
        runner = (await store.find(job_id)).get("runner")
        if runner:
            await store.send_command(runner, {"op": "stop", "job": job_id})

    # -- poll and stop -------------------------------------------------------------
    async def poll(self) -> int | None:
        if not self.job_id:
            return 0
        store = self.store
        job = await store.find(self.job_id)
        state = job.get("state")
        if state in (None, *TERMINAL):
            await self._release_deploy_key(job)  # stop() will not be called for it
        elif state not in (QUEUED, CLAIMED, FETCHING):
            self._fetch_over(self.job_id)  # e.g. after a hub restart during the launch
        if state is None or state == STOPPED:
            return 0
        if state == FAILED:
            return int(job.get("exit_code") or 1)
        if state in (QUEUED, *EARLY) and getattr(self, "_launched_here", None) != self.job_id:
            # a launch this hub process never started (its state came from the database):
            # the hub restarted during it. JupyterHub's start-up check waits for poll()
            # (in the background after init_spawners_timeout): follow the launch there
            if self._check_pending:
                return await self._resume(self.job_id)
            # anywhere else no one would wait for it. (A launch interrupted by a stop is
            # this process's own: stop() ends that one.)
            await self._abort(self.job_id, f"The hub restarted during this launch (the job "
                              f"was {state}): start the server again")
            await self._release_deploy_key()  # stop() will not be called for it
            return 1
        runner = job.get("runner", "")
        if state in ACTIVE + (STOPPING,) and not await is_alive(store.redis, self.keys, runner):
            await self._fail(f"Runner {runner} stopped answering (no heartbeat)")
            return 1
        return None

    async def _fail(self, reason: str) -> None:
        await self.store.fail(self.job_id, reason)

    async def stop(self, now: bool = False) -> None:
        if not self.job_id:
            return
        job = await self.store.find(self.job_id)
        if job.get("state") == RUNNING and self.autosave_hook is not None:
            await self._autosave(self.job_id)
        if job.get("state") not in (None, *TERMINAL):
            await self._stop_job(self.job_id)
        await self._release_deploy_key(job)

    async def _autosave(self, job_id: str) -> None:
        """The operator's autosave before the container goes. A failure that may pass
        (GitLab or the server answering 5xx, or not at all) is tried again, the server
        kept up meanwhile, until ``autosave_timeout``; one that will not (a 4xx: a
        refusal, a limit) ends it at once. Never blocks the stop beyond that time, and
        every failure is in the job's log."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self.autosave_timeout, AUTOSAVE_RETRY
        while True:
            try:
                message = await asyncio.wait_for(self.autosave_hook(self),
                                                 max(deadline - loop.time(), 0.1))
                break
            except asyncio.TimeoutError:
                message = f"Autosave FAILED: not done within {self.autosave_timeout:.0f} s"
                break
            except Exception as e:  # the stop must go on; the reason goes to the log
                self.log.warning("Autosave of %s failed: %s", self._log_name, e)
                status = getattr(e, "status", 0) or 0
                if 400 <= status < 500 or deadline - loop.time() <= delay:
                    message = f"Autosave FAILED: {e}"
                    break
                await self.store.log(
                    job_id, f"Autosave failed ({str(e)[:300]}): trying again in "
                    f"{delay:.0f} s; the server stays up until it is saved or "
                    f"{self.autosave_timeout:.0f} s have passed", phase="stop")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
        if message:
            await self.store.log(job_id, str(message)[:500], phase="stop")

    async def _stop_job(self, job_id: str) -> None:
        """Stop the job wherever it is (see JobStore.request_stop) and wait until its
        runner confirms; a job that cannot be stopped, or whose runner stays silent,
        is failed with the reason."""
        outcome, job = await self.store.request_stop(job_id, "Stopping")
        if outcome == "stuck":
            await self._fail(f"The job could not be stopped in state {job.get('state')!r}")
            return
        if outcome in ("cancelled", "ended"):
            return
        runner = job.get("runner", "")
        try:
            await asyncio.wait_for(self._wait_stopped(job_id), self.stop_timeout)
        except asyncio.TimeoutError:
            await self._fail(f"Runner {runner} did not confirm the stop "
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

    # -- progress ----------------------------------------------------------------------
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


async def _both(first: Awaitable[Any], second: Awaitable[Any]) -> tuple[Any, Any]:
    """Await two calls together; if both fail, the first's error is the one raised
    (a project nobody can read says so, not that its branch is missing)."""
    a, b = await asyncio.gather(first, second, return_exceptions=True)
    for result in (a, b):
        if isinstance(result, BaseException):
            raise result
    return a, b
