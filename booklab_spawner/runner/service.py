"""The runner's service: heartbeat, claims, commands, recovery and shutdown.

:class:`Runner` is what ``booklab-runner`` runs once :class:`~.app.RunnerApp` has
read and checked its options: it claims queued jobs with the claim script of
``jobs.py`` (blocking on wake-up tokens, no polling), one job per free slot, answers
stop commands, requeues the jobs of dead runners and, when it starts, adopts or
removes the containers it left. See docs/runner.md.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from .. import __version__, registry
from .. import jobs as J
from .. import profiles as profmod
from .. import runnerconf as confmod
from ..crypto import SecretBox, Signer
from ..exceptions import InvalidTransition, JobNotFound, RunnerUnavailable, SignatureError
from ..keys import Keys, check_id
from ..redis_client import connect
from . import fetch, imagekey
from . import labels as runner_labels
from .buildlock import BuildLock
from .containers import Launcher
from .heartbeat import heartbeat_loop
from .imagecache import ImageCache
from .recovery import RecoveryContext, reap_loop, reconcile
from .warm import WarmPool
from .worker import JobWorker, WorkerContext

if TYPE_CHECKING:
    from .app import RunnerApp

log = logging.getLogger("booklab.runner")

CLAIM_BLOCK = 2.0  # seconds one claim blocks before re-checking for shutdown


class Runner:
    """The runner's main loop: heartbeat, claims and commands."""

    def __init__(self, app: RunnerApp):
        self.runner_id = app.runner_id
        self.slots = app.slots
        self.work_dir = app.work_dir
        # timings (see RunnerApp): recovery.py reads the first two
        self.reap_interval, self.orphan_grace = app.reap_interval, app.orphan_grace
        self.shutdown_timeout = app.shutdown_timeout
        self.heartbeat_ttl, self.heartbeat_interval = app.heartbeat_ttl, app.heartbeat_interval
        self.keys = Keys(app.key_prefix)
        self.redis = connect(app.redis_url)
        self.store = J.JobStore(self.redis, self.keys)
        self.box = SecretBox(app.runner_token)
        self.signer = Signer(app.runner_token)  # conf and jobs are checked with it
        self.gitlab_url, self.hub_url = app.gitlab_url, app.hub_url  # win over conf
        self.name_key = imagekey.name_key(app.runner_token)  # image names no build can guess
        self.launcher = Launcher(self.runner_id, app.advertise_host,
                                 policy=app.container_policy(), network=app.notebook_net())
        self.images = ImageCache(self.redis, self.keys, self.runner_id, self.launcher,
                                 int(app.image_budget or 0))
        self.known_hosts = _read(app.known_hosts)
        self.advertise_host = app.advertise_host
        self.operator_labels = runner_labels.parse(app.labels)  # checked again: also config files
        self.labels = dict(self.operator_labels)  # with the detected facts once running
        self.workers: dict[str, tuple[JobWorker, asyncio.Task]] = {}
        self.slot_free = asyncio.Event()
        self.stopping = asyncio.Event()
        self.warm = WarmPool(
            self.launcher, self.runner_id, self.slots, busy=lambda: len(self.workers),
            holding=lambda: sum(1 for w, _ in self.workers.values() if w.container_id),
            changed=self.publish_info)
        # what the parts get of the runner: narrow, explicit contexts
        self.worker_context = WorkerContext(
            runner_id=self.runner_id, store=self.store, box=self.box, signer=self.signer,
            launcher=self.launcher, images=self.images, name_key=self.name_key,
            known_hosts=self.known_hosts, work_dir=self.work_dir, conf=self.conf,
            image_launched=self.image_launched,
            build_lock=lambda key, job: BuildLock(self.redis, self.keys, key,
                                                  self.runner_id, job),
            warm=self.warm)
        self.recovery = RecoveryContext(
            runner_id=self.runner_id, store=self.store,
            dead_runners=functools.partial(registry.dead_runners, self.redis, self.keys),
            forget=functools.partial(registry.forget, self.redis, self.keys),
            launcher=self.launcher, adopt=self.adopt, reap_interval=self.reap_interval,
            orphan_grace=self.orphan_grace, stopping=self.stopping)

    def info(self) -> dict[str, str]:
        return {
            "host": self.advertise_host, "slots": str(self.slots),
            "used": str(len(self.workers)), "version": __version__,
            "jobs": json.dumps(sorted(self.workers)), "images": json.dumps(self.images.held),
            "labels": json.dumps(self.labels, sort_keys=True),
            "warm": json.dumps(self.warm.counts()),
        }

    async def conf(self) -> confmod.RunnerConf:
        conf = await confmod.read(self.redis, self.keys, self.signer)
        if conf is None:
            raise RunnerUnavailable("The hub has not published its configuration (conf) yet")
        # where credentials may go: the runner's own configuration first
        conf.gitlab_url = self.gitlab_url or conf.gitlab_url
        conf.hub_url = self.hub_url or conf.hub_url
        self.warm.configure(conf.warm_servers, conf.warm_ttl)
        return conf

    async def _isolate(self) -> None:
        """Bridge mode: the notebook network and firewall, before any container is
        adopted (rules a reboot or a firewall reload lost come back now)."""
        try:
            if (await self.conf()).network == "bridge" and self.launcher.network:
                await self.launcher.network.ensure()
        except RunnerUnavailable:  # a fresh hub: it publishes conf with its first launch
            log.info("no hub configuration in Redis yet: the notebook network is set up "
                     "at the first bridge launch")
        except Exception as e:  # every bridge launch tries again and says why
            log.error("notebook network not ready: %s", e)

    async def run(self) -> None:
        os.makedirs(self.work_dir, mode=0o700, exist_ok=True)
        fetch.sweep_work_dir(self.work_dir)  # keys and checkouts a killed runner left
        self.labels = runner_labels.offered(
            self.operator_labels, runner_labels.detect(await self.launcher.engine_info()))
        await registry.register(self.redis, self.keys, self.runner_id, self.info(),
                                self.heartbeat_ttl)
        log.info("runner %s registered (%d slot(s), advertising %s)",
                 self.runner_id, self.slots, self.advertise_host)
        await self._isolate()
        await self.launcher.exits.start()  # before reconcile: adopted containers are watched
        await reconcile(self.recovery)
        await self._evict()
        tasks = [
            asyncio.create_task(heartbeat_loop(self.redis, self.keys, self.runner_id,
                                               self.info, self.stopping,
                                               self.heartbeat_interval, self.heartbeat_ttl)),
            asyncio.create_task(self.claim_loop()),
            asyncio.create_task(self.command_loop()),
            asyncio.create_task(reap_loop(self.recovery)),
            asyncio.create_task(self.warm.run(self.stopping)),
        ]
        await self.stopping.wait()
        await asyncio.gather(*tasks[1:])
        try:
            await asyncio.wait_for(self._leave(), self.shutdown_timeout)
        except (asyncio.TimeoutError, RedisError, OSError) as e:
            # Redis is gone: our heartbeat expires by itself and other runners
            # (or this one, restarted) reap and reconcile what we held.
            why = str(e) or f"not done within the shutdown timeout ({self.shutdown_timeout:g} s)"
            log.warning("could not hand back jobs or deregister (%s); "
                        "the heartbeat will expire in %d s", why, self.heartbeat_ttl)
        tasks[0].cancel()
        await self.warm.close()
        await self.launcher.close()
        await self.redis.aclose()
        log.info("runner %s stopped", self.runner_id)

    async def _leave(self) -> None:
        await self.shutdown()
        await registry.deregister(self.redis, self.keys, self.runner_id)

    async def claim_loop(self) -> None:
        while not self.stopping.is_set():
            if len(self.workers) >= self.slots:  # no free slot: claim nothing
                self.slot_free.clear()
                try:  # woken by a finishing job; re-check for shutdown now and then
                    await asyncio.wait_for(self.slot_free.wait(), CLAIM_BLOCK)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                served = await self.served_profiles()
                job_id = await self.store.claim(self.runner_id, CLAIM_BLOCK, served)
            except Exception as e:
                log.warning("claim failed: %s", e)
                await asyncio.sleep(1)  # Redis unreachable: back off, don't spin
                continue
            if job_id is not None and await self._take(job_id):
                await self.store.announce_positions(profiles=served)
                await self.publish_info()

    async def served_profiles(self) -> list[str]:
        """The launch profiles this runner's labels satisfy, in the order it claims
        them, from the hub's signed conf (only the default one before the hub
        published it, or when its profiles cannot be read)."""
        known = [profmod.DEFAULT]
        try:
            conf = await confmod.read(self.redis, self.keys, self.signer)
            if conf is not None and conf.profiles:
                known = profmod.parse(conf.profiles)
        except (SignatureError, ValueError) as e:
            # claim default jobs anyway: each then fails saying why (worker.py checks)
            log.warning("ignoring the hub's launch profiles: %s", e)
        served = profmod.served_by(known, self.labels)
        if served != getattr(self, "_served", None):
            log.info("serving launch profiles: %s", ", ".join(served) or "none")
            self._served = served
        return served

    async def _take(self, job_id: str) -> bool:
        if await self.store.move(job_id, J.CLAIMED, f"Claimed by runner {self.runner_id}",
                                 allowed_from=[J.QUEUED], runner=self.runner_id) is None:
            log.info("skipping job %s: it is no longer queued", job_id)
            await self.store.release(self.runner_id, job_id)
            return False
        if not await self._can_serve(job_id):
            await self.store.release(self.runner_id, job_id)
            return False
        if self.stopping.is_set():
            await self.store.requeue(self.runner_id, job_id, "Runner is shutting down; requeued")
            return False
        worker = JobWorker(self.worker_context, job_id)
        self._track(worker, worker.run())
        log.info("claimed job %s", job_id)
        return True

    async def _can_serve(self, job_id: str) -> bool:
        """Whether this runner's labels satisfy what the job asks; the job fails saying
        so when they do not (it sat in a queue this runner serves: the operator changed
        the profile since, or Redis was written by someone else)."""
        try:
            needs = profmod.job_needs(await self.store.find(job_id))
            if needs.satisfied_by(self.labels):
                return True
            why = (f"Runner {self.runner_id} does not offer what launch profile "
                   f"{needs.name!r} needs (labels {needs.labels}, GPUs {needs.gpus or 0}): "
                   "the profile changed since the launch; start it again")
        except ValueError as e:
            why = f"The job's launch profile cannot be read ({e})"
        log.warning("job %s: %s", job_id, why)
        await self.store.fail(job_id, why)
        return False

    def adopt(self, job_id: str, container_id: str, image: str) -> None:
        """Watch a container left by this runner's previous run (see recovery)."""
        worker = JobWorker(self.worker_context, job_id)
        self._track(worker, worker.adopt(container_id, image))

    def _track(self, worker: JobWorker, body) -> None:
        task = asyncio.create_task(body)
        self.workers[worker.job_id] = (worker, task)
        task.add_done_callback(lambda _t, j=worker.job_id: self._done(j))

    def _done(self, job_id: str) -> None:
        self.workers.pop(job_id, None)
        self.slot_free.set()
        self.warm.wake()

    async def image_launched(self, image: str, prefix: str) -> None:
        """Record a launch, then keep the image cache within its budget."""
        try:
            await self.images.touch(image)
        except Exception as e:
            log.warning("recording the launch of %s failed: %s", image, e)
        await self._evict(prefix)

    async def _evict(self, prefix: str | None = None) -> None:
        try:
            if prefix is None:
                conf = await confmod.read(self.redis, self.keys, self.signer)
                if conf is None:
                    return
                prefix = conf.image_prefix
            await self.images.evict(prefix)
            await self.publish_info()
        except Exception as e:  # the cache is best effort; launches go on
            log.warning("image eviction failed: %s", e)

    async def publish_info(self) -> None:
        """Update ``runner:<id>`` now rather than at the next heartbeat."""
        await self.redis.hset(self.keys.runner(self.runner_id), mapping=self.info())

    async def command_loop(self) -> None:
        key = self.keys.commands(self.runner_id)
        while not self.stopping.is_set():
            try:
                item = await self.redis.blpop([key], timeout=CLAIM_BLOCK)
            except Exception as e:
                log.warning("reading commands failed: %s", e)
                await asyncio.sleep(1)
                continue
            if item:
                await self.handle(item[1])

    async def handle(self, raw: str) -> None:
        try:
            command = json.loads(raw)
            job_id = check_id("job", command.get("job", ""))
        except (ValueError, AttributeError):
            log.warning("ignoring malformed command %r", raw[:200])
            return
        if command.get("op") != "stop":
            log.warning("ignoring unknown command %r", command.get("op"))
            return
        entry = self.workers.get(job_id)
        if entry is None:
            await self._stop_unknown(job_id)
            return
        worker, task = entry
        if worker.container_id:
            await worker.stop()
        else:
            task.cancel()

    async def _stop_unknown(self, job_id: str) -> None:
        """A stop for a job this runner no longer works on: confirm it."""
        await self.store.move(job_id, J.STOPPED, "Stopped", allowed_from=[J.STOPPING])

    async def shutdown(self) -> None:
        """Hand back jobs not yet running; stop the notebooks of running ones."""
        for job_id, (worker, task) in list(self.workers.items()):
            if worker.state in J.EARLY:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                try:
                    await self.store.requeue(self.runner_id, job_id,
                                             f"Runner {self.runner_id} shut down; requeued")
                except (InvalidTransition, JobNotFound):
                    pass
            else:
                await self.store.move(job_id, J.STOPPING,
                                      f"Runner {self.runner_id} is shutting down")
                await worker.stop()
                await asyncio.gather(task, return_exceptions=True)


def _read(path: str) -> str:
    if not path:
        return ""
    with open(path) as f:
        return f.read()
