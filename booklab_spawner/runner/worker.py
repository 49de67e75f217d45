"""One job on a runner: fetch, build (once per image), start, watch, stop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import jobs as J
from ..crypto import SecretBox, Signer
from ..exceptions import BooklabError, FetchFailed, InvalidTransition, JobNotFound, LaunchFailed
from ..runnerconf import RunnerConf
from ..scrub import Scrubber
from . import build, fetch, gitsafe, imagekey, tree
from .buildlock import BuildLock
from .containers import ContainerExited, Launcher, exit_message, pack
from .imagecache import ImageCache
from .warm import Recipe, WarmPool

log = logging.getLogger(__name__)
RENEW_WAIT = 60  # seconds a runner waits for the hub to renew a used clone credential


class Aborted(Exception):
    """The job was stopped or taken away while this runner worked on it."""


@dataclass(frozen=True)
class WorkerContext:
    """What a job's worker needs of its runner, and nothing more (the runner builds
    one and hands it to every worker)."""

    runner_id: str
    store: J.JobStore
    box: SecretBox  # opens and reseals the job's secrets
    signer: Signer  # checks the job record, signs the notebook URL
    launcher: Launcher
    images: ImageCache
    name_key: bytes  # image names no build can guess (imagekey.name_key)
    known_hosts: str  # the runner's own known_hosts, if the hub publishes none
    work_dir: str
    conf: Callable[[], Awaitable[RunnerConf]]  # the hub's signed conf, runner's overrides
    image_launched: Callable[[str, str], Awaitable[None]]  # (image, prefix): record, evict
    build_lock: Callable[[str, str], BuildLock]  # (image key, job id) -> the build lock
    warm: WarmPool | None = None  # warm notebook containers (runner/warm.py)


class JobWorker:
    def __init__(self, runner: WorkerContext, job_id: str):
        self.runner = runner
        self.job_id = job_id
        self.store = runner.store
        self.scrub = Scrubber()
        self.container_id: str | None = None
        self.image = ""
        self._url = ""
        self.recipe: Recipe | None = None  # set when the launch could go warm
        self._bound_warm = False  # its container was a warm one
        self.state = J.CLAIMED

    async def say(self, message: str, phase: str = "") -> None:
        """Append a (scrubbed) line to the job's log."""
        await self.store.log(self.job_id, self.scrub(message), phase or self.state)

    async def step(self, state: str, message: str, **fields: str) -> None:
        if "url" in fields:  # the hub accepts only a URL a runner signed for this job
            fields["url_sig"] = self.runner.signer.sign_url(self.job_id, self.runner.runner_id,
                                                            fields["url"])
        try:
            await self.store.transition(self.job_id, state, self.scrub(message),
                                        allowed_from=[self.state], **fields)
        except (InvalidTransition, JobNotFound) as e:
            raise Aborted(str(e)) from None
        self.state = state

    # -- entry points ---------------------------------------------------------
    async def run(self) -> None:
        """The whole pipeline for a job this runner just claimed."""
        await self._guard(self._run())

    async def adopt(self, container_id: str, image: str) -> None:
        """Watch a running container a previous incarnation of this runner started."""
        self.container_id, self.image, self.state = container_id, image, J.RUNNING
        await self._guard(self._adopted())

    async def _guard(self, body: Awaitable[None]) -> None:
        try:
            await body
        except Aborted as e:
            log.info("job %s aborted: %s", self.job_id, e)
            await self._finish_stop()
        except asyncio.CancelledError:
            await asyncio.shield(self._finish_stop())
            raise
        except ContainerExited as e:
            await self._say_lines(e.exit.last_lines)
            await self._fail(str(e), e.exit.code)
        except BooklabError as e:
            await self._fail(str(e))
        except Exception:
            log.exception("job %s: unexpected error", self.job_id)
            await self._fail(f"Internal error on runner {self.runner.runner_id}; "
                             "the runner's own log has the details")
        finally:
            if self.runner.warm is not None:
                self.runner.warm.release(self.job_id)
            await self.store.release(self.runner.runner_id, self.job_id)

    # -- the pipeline -----------------------------------------------------------
    async def _secrets(self) -> dict[str, Any]:
        """The job's secrets, only if the hub signed the job and sealed them for it."""
        record = await self.store.get(self.job_id)
        self.runner.signer.check_job(record)
        blob = await self.store.secrets(self.job_id)
        secrets = self.runner.box.open(blob or "", record)
        clone = secrets.setdefault("clone", {})
        if clone.get("method") == "ssh":
            self.scrub.add(clone.get("private_key"))
        elif clone.get("method") == "proxy":
            self.scrub.add_basic_auth(self.job_id, clone.get("secret", ""))
        else:
            self.scrub.add_basic_auth(clone.get("username", ""), clone.get("password", ""))
        for value in (secrets.get("env") or {}).values():
            self.scrub.add(value)
        self._sealed = (record, secrets)
        return secrets

    async def _forget_clone(self) -> None:
        """The fetch is over: rewrite the job's secrets without the clone credential."""
        record, secrets = self._sealed
        rest = {k: v for k, v in secrets.items() if k not in ("clone", "job", "bound")}
        blob = self.runner.box.seal(self.job_id, record, rest)
        for delay in (0.5, 1, 2, None):
            try:
                await self.store.replace_secrets(self.job_id, blob)
                await self.store.revoke_fetch(self.job_id)
                return
            except Exception as e:  # Redis hiccup: retry; the TTL is the backstop
                if delay is None:
                    log.warning("job %s: could not remove the clone credential: %s",
                                self.job_id, e)
                    return
                await asyncio.sleep(delay)

    async def _run(self) -> None:
        job = await self.store.get(self.job_id)
        secrets = await self._secrets()
        conf = await self.runner.conf()
        self.runner.signer.check_job(job)  # the copy the rest of the pipeline acts on
        await self._prestart(job, conf)
        workdir = tempfile.mkdtemp(prefix="booklab-job-", dir=self.runner.work_dir)
        try:
            checkout = os.path.join(workdir, "repo")
            await self._fetch(job, secrets["clone"], conf, checkout)
            entries = await imagekey.tree_entries(gitsafe.git_dir(checkout), job["sha"])
            # before anything on this host reads the checkout: no link may leave it
            await asyncio.to_thread(tree.check_links, checkout, entries)
            self.image = await self._ensure_image(job, checkout, entries, conf)
            content = await asyncio.to_thread(pack, checkout, os.path.join(workdir, "repo.tar"),
                                               conf.user_id)
            await self.step(J.STARTING, f"Starting the notebook from {self.image}")
            await self._start(job, secrets, conf, content)
            await self._listening(job, secrets, conf, content)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
        await self.step(J.RUNNING, f"Notebook server is listening at {self._url}",
                        url=self._url, container=self.container_id, image=self.image)
        await self.runner.image_launched(self.image, conf.image_prefix)
        if self.recipe is not None and self.runner.warm is not None:
            self.runner.warm.launched(self.recipe)
        await self._watch()

    async def _prestart(self, job: dict[str, str], conf: RunnerConf) -> None:
        """Have a container started while the fetch runs, from the image the project's
        last launch here used (the commit may need another: then it goes to the pool)."""
        pool = self.runner.warm
        if pool is None or not conf.prestart:
            return
        try:
            guess = await self.runner.images.latest(imagekey.image_repo(
                conf.image_prefix, job["project_id"], job["project"]))
            if not guess or not await self.runner.launcher.image_exists(guess):
                return
            recipe = pool.recipe(job, guess, self._cmd(job), conf.network,
                                 conf.notebook_port, conf.user_id)
        except BooklabError:
            return  # the pipeline says what is wrong with the job
        if recipe is not None:
            pool.prestart(self.job_id, recipe)

    @staticmethod
    def _cmd(job: dict[str, str]) -> list[str]:
        return json.loads(job.get("cmd") or '["jupyterhub-singleuser"]')

    async def _fetch(self, job: dict[str, str], clone: dict[str, str], conf: RunnerConf,
                     checkout: str) -> None:
        sha, ref = job["sha"], job["ref"]
        await self.step(J.FETCHING, f"Fetching {job['project']} at {ref} ({sha[:12]})")
        if not clone.get("method"):
            clone = await self._renewed_clone()
        method = clone.get("method")
        try:
            if method == "ssh":
                url = fetch.check_ssh_url(job.get("ssh_url", ""))
                known = conf.ssh_known_hosts or self.runner.known_hosts
                await self.say(f"Cloning over SSH with a read-only deploy key from {url}")
                await fetch.fetch_ssh(url, ref, sha, checkout, clone["private_key"], known,
                                      self.say)
            elif method == "proxy":
                url = fetch.check_proxy_url(conf.hub_url, self.job_id)
                await self.say(f"Fetching through the hub's read-only git proxy {url}")
                await fetch.fetch_proxy(url, ref, sha, checkout, self.job_id, clone["secret"],
                                        self.say)
            elif method == "token":
                url = fetch.check_clone_url(job["clone_url"], conf.gitlab_url)
                await fetch.fetch(url, ref, sha, checkout, clone["username"],
                                  clone["password"], self.say)
            else:
                raise FetchFailed(f"Unknown clone method {method!r}")
        finally:
            await self._forget_clone()

    async def _renewed_clone(self) -> dict[str, str]:
        """A job handed back after its fetch has no clone credential any more: wait (on
        the job's log, not a timer) until the hub renews it."""
        after = await self.store.last_log_id(self.job_id) or "0-0"
        clone = (await self._secrets())["clone"]  # renewed already?
        if clone.get("method"):
            return clone
        await self.say("This job was fetched before by a runner that stopped: waiting for "
                       "the hub to renew its clone credential")
        deadline = asyncio.get_running_loop().time() + RENEW_WAIT
        async for entry in self.store.follow_log(self.job_id, after=after, block_ms=2000,
                                                 until=()):
            if entry is not None and entry.kind == "log" and entry.phase == J.CLONE_RENEWED:
                return (await self._secrets())["clone"]
            if asyncio.get_running_loop().time() > deadline:
                break
        raise FetchFailed("This launch's clone credential was used by a runner that "
                          f"stopped, and the hub did not renew it within {RENEW_WAIT} s: "
                          "launch again")

    async def _ensure_image(self, job: dict[str, str], checkout: str,
                            entries: dict[str, str], conf: RunnerConf) -> str:
        env = await imagekey.environment(gitsafe.git_dir(checkout), job["sha"], conf.user_id,
                                      conf.user_name, entries)
        image = imagekey.image_name(conf.image_prefix, job["project_id"], job["project"], env.hash,
                                 self.runner.name_key)
        await self.step(J.BUILDING, f"Image {image}, from {env.describe()}")
        lock = self.runner.build_lock(imagekey.image_key(image), self.job_id)
        launcher = self.runner.launcher
        while True:
            if await launcher.image_exists(image):
                await self.say(f"Image {image} already exists: reusing it, no build needed")
                return image
            if await lock.acquire():
                async with lock.kept():
                    if not await launcher.image_exists(image):
                        context = await asyncio.to_thread(
                            tree.build_context, checkout, checkout + ".context",
                            None if env.whole_tree else env.files)
                        await build.build(context, image, conf.user_id, conf.user_name,
                                          conf.build_timeout, self._build_line)
                await self.runner.images.touch(image)
                await self.say(f"Built image {image}")
                return image
            holder = await lock.holder()
            if holder is not None and await lock.break_if_dead(holder):
                await self.say(f"Runner {holder[0]} stopped answering while it built image "
                               f"{image} for job {holder[1]}: building it here")
            elif holder is not None:
                await self.say(f"Image {image} is being built for job {holder[1]} on runner "
                               f"{holder[0]}: waiting for that build, its log follows")
                await lock.follow(self.store, holder[1], self._build_line)

    async def _build_line(self, message: str, phase: str) -> None:
        await self.say(message, phase)

    async def _start(self, job: dict[str, str], secrets: dict[str, Any], conf: RunnerConf,
                     content: str) -> None:
        env = {**json.loads(job.get("env") or "{}"), **(secrets.get("env") or {})}
        cmd = self._cmd(job)
        args = json.loads(job.get("args") or "[]")
        pool = self.runner.warm
        if pool is not None:
            self.recipe = pool.recipe(job, self.image, cmd, conf.network, conf.notebook_port,
                                      conf.user_id)
            warm = await pool.take(self.recipe, self.job_id) if self.recipe else None
            pool.release(self.job_id)  # a reservation of another image: the pool's now
            if warm is not None:
                self.container_id = warm.container_id  # from now on a stop removes it
                age = time.time() - warm.created
                started = ("started while fetching" if warm.reserved == self.job_id else
                           f"started {age:.0f} s before this launch")
                await self.say(f"Binding warm notebook container {warm.container_id[:12]} "
                               f"({started}{', server imports done' if warm.ready else ''})")
                try:
                    self.container_id, self._url = await pool.bind(warm, job, env, args,
                                                                   content)
                    self._bound_warm = True
                    return
                except LaunchFailed as e:  # it died meanwhile: not the launch's fault
                    await self._warm_failed(str(e))
        await self._start_cold(job, secrets, conf, content)

    async def _start_cold(self, job: dict[str, str], secrets: dict[str, Any], conf: RunnerConf,
                          content: str) -> None:
        public = json.loads(job.get("env") or "{}")
        cmd, args = self._cmd(job), json.loads(job.get("args") or "[]")
        if self.runner.warm is not None:
            await self.runner.warm.make_room()
        self.container_id, self._url = await self.runner.launcher.start(
            job, self.image, cmd + args, public, conf.network, conf.notebook_port, conf.user_id,
            content=content, secret_env=secrets.get("env") or {})

    async def _listening(self, job: dict[str, str], secrets: dict[str, Any], conf: RunnerConf,
                         content: str) -> None:
        """Until the server listens. A warm container that dies while it starts is
        not the launch's fault: the launch starts cold instead, and the image goes
        cold on this runner (its warm or prestarted servers do not work)."""
        launcher = self.runner.launcher
        try:
            await launcher.wait_listening(self.container_id, self._url,
                                          conf.container_start_timeout)
            return
        except ContainerExited as e:
            if not self._bound_warm:
                raise
            await self._say_lines(e.exit.last_lines)
            await self._warm_failed(f"it exited while starting: {e}")
        await self._start_cold(job, secrets, conf, content)
        await launcher.wait_listening(self.container_id, self._url,
                                      conf.container_start_timeout)

    async def _warm_failed(self, why: str) -> None:
        """Remove the warm container this job got; the image goes cold on this runner."""
        await self.say(f"The warm notebook container did not work ({why}): starting a "
                       "fresh container instead")
        if self.runner.warm is not None:
            self.runner.warm.unwarmable.add(self.image)
        if self.container_id:
            await self.runner.launcher.remove(self.container_id, grace=0)
        self.container_id, self._bound_warm = None, False

    async def _adopted(self) -> None:
        try:
            await self._secrets()  # so that the container's last lines are scrubbed
        except BooklabError:
            pass
        await self.say(f"Runner {self.runner.runner_id} restarted and adopted this notebook's "
                       "container", J.RUNNING)
        await self._watch()

    async def _watch(self) -> None:
        """Wait for the container to exit by itself (a stop request also ends it)."""
        assert self.container_id
        result = await self.runner.launcher.wait_exit(self.container_id)
        current = await self.store.state(self.job_id)
        if current != J.RUNNING:
            raise Aborted(f"container ended while the job is {current}")
        await self._say_lines(result.last_lines)
        await self.runner.launcher.remove(self.container_id)
        if result.oom_killed or result.code:
            await self._fail(exit_message(result), result.code)
        else:
            await self.store.transition(self.job_id, J.STOPPED,
                                        "The notebook server exited by itself (code 0)",
                                        allowed_from=[J.RUNNING], exit_code="0")

    async def _say_lines(self, lines: list[str]) -> None:
        if lines:
            await self.say(f"Last {len(lines)} line(s) of the notebook's output:", J.RUNNING)
        for line in lines:
            await self.say(line, J.RUNNING)

    # -- endings ------------------------------------------------------------------
    async def stop(self) -> None:
        """Handle a stop request: end the container; the pipeline then finishes."""
        if self.container_id:
            await self.runner.launcher.remove(self.container_id)

    async def _finish_stop(self) -> None:
        if self.container_id:
            await self.runner.launcher.remove(self.container_id)
        await self.store.move(self.job_id, J.STOPPED, "Stopped", allowed_from=[J.STOPPING],
                              exit_code="0")

    async def _fail(self, reason: str, code: int = 1) -> None:
        reason = self.scrub(reason)
        if self.container_id:
            await self.runner.launcher.remove(self.container_id)
        await self.store.fail(self.job_id, reason, code)
