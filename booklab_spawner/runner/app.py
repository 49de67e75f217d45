"""``booklab-runner``: the worker service on each Docker machine.

It needs a Redis URL and the runner token; everything else comes from the
``conf`` hash the hub publishes. It claims queued jobs with a blocking BLMOVE
(no polling), one job per free slot, answers stop commands, requeues the jobs
of dead runners and, when it starts, adopts or removes the containers it left.
See docs/runner.md.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import os
import re
import signal
import socket

from redis.exceptions import RedisError
from traitlets import Bool, Float, Integer, List, Unicode, default, validate
from traitlets.config import Application

from .. import __version__, registry
from .. import jobs as J
from .. import profiles as profmod
from .. import runnerconf as confmod
from ..crypto import SecretBox, Signer, check_runner_token
from ..exceptions import InvalidTransition, JobNotFound, RunnerUnavailable, SignatureError
from ..keys import DEFAULT_PREFIX, Keys, check_id
from ..redis_client import connect, default_url
from ..traits import ByteSize
from . import fetch, imagekey
from . import labels as runner_labels
from .buildlock import BuildLock
from .containers import ContainerPolicy, Launcher
from .heartbeat import heartbeat_loop
from .imagecache import ImageCache
from .network import NotebookNetwork, check_name, parse_allow, parse_deny, redis_rules
from .recovery import RecoveryContext, reap_loop, reconcile
from .warm import WarmPool
from .worker import JobWorker, WorkerContext

log = logging.getLogger("booklab.runner")

CLAIM_BLOCK = 2.0  # seconds one BLMOVE blocks before re-checking for shutdown


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


class RunnerApp(Application):
    name = "booklab-runner"
    description = """Booklab runner: builds GitLab repositories with repo2docker and runs
    their notebook servers in Docker, for the JupyterHub that shares its Redis."""
    version = __version__

    redis_url = Unicode(config=True, help="Redis URL shared with the hub "
                        "(default: $BOOKLAB_REDIS_URL or redis://127.0.0.1:6379/0).")

    @default("redis_url")
    def _default_redis_url(self) -> str:
        return default_url()

    runner_token = Unicode(config=True, help="Secret shared with the hub, at least 32 "
                           "characters (default: $BOOKLAB_RUNNER_TOKEN).")

    @default("runner_token")
    def _default_runner_token(self) -> str:
        return os.environ.get("BOOKLAB_RUNNER_TOKEN", "")

    runner_id = Unicode(config=True, help="This runner's id: letters, digits, '.', '_', '-' "
                        "(default: the host name).")

    @default("runner_id")
    def _default_runner_id(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "runner"

    @validate("runner_id")
    def _check_runner_id(self, proposal) -> str:
        return check_id("runner", proposal.value)

    labels = List(Unicode(), config=True, help="""What this runner offers, as key=value
        (repeat --label), e.g. --label gpu=a100 --label site=lab2. It also publishes
        cpus, memory (bytes) and gpus, detected from Docker; a label of the same name
        wins over a detected one.""")

    @validate("labels")
    def _check_labels(self, proposal) -> list[str]:
        runner_labels.parse(proposal.value)
        return proposal.value

    advertise_host = Unicode("127.0.0.1", config=True, help="Address at which the hub "
                             "and its proxy reach this runner's notebooks, e.g. 10.0.0.12.")
    slots = Integer(1, config=True, help="Notebooks this runner runs at once (one per slot).")

    @validate("slots")
    def _check_slots(self, proposal) -> int:
        if proposal.value < 1:
            raise ValueError("slots must be at least 1")
        return proposal.value

    work_dir = Unicode("/var/lib/booklab-runner", config=True,
                       help="Directory for checkouts and build contexts (emptied after use).")
    key_prefix = Unicode(DEFAULT_PREFIX, config=True, help="Redis key prefix (as the hub's).")
    known_hosts = Unicode("", config=True, help="known_hosts file with GitLab's SSH host "
                          "key(s), used when the hub publishes no ssh_known_hosts, e.g. "
                          "/etc/booklab/known_hosts.")
    gitlab_url = Unicode(config=True, help="""The only GitLab this runner sends a clone
        credential to, e.g. https://gitlab.example.org (default: $BOOKLAB_GITLAB_URL).
        When set it wins over the gitlab_url the hub publishes in Redis; recommended
        whenever Redis is shared with anything but the hub.""")

    @default("gitlab_url")
    def _default_gitlab_url(self) -> str:
        return os.environ.get("BOOKLAB_GITLAB_URL", "")

    hub_url = Unicode(config=True, help="""The hub's URL as this runner reaches it, e.g.
        http://10.0.0.2:8081/hub/, for fetching through the hub's read-only git proxy
        (default: $BOOKLAB_HUB_URL, else the hub_url the hub publishes in Redis).""")

    @default("hub_url")
    def _default_hub_url(self) -> str:
        return os.environ.get("BOOKLAB_HUB_URL", "")

    # -- timings (the container start timeout comes from the hub, in conf) ----------
    reap_interval = Float(5.0, config=True, help="Seconds between this runner's scans for "
                          "dead runners (no heartbeat), whose waiting jobs it then requeues, "
                          "e.g. 5.")
    orphan_grace = Float(300.0, config=True, help="Seconds after a dead runner's last "
                         "heartbeat during which its running notebooks are left alone, so "
                         "that it can come back and adopt them; after that they are failed, "
                         "e.g. 300.")
    heartbeat_ttl = Integer(registry.HEARTBEAT_TTL, config=True, help="Seconds after its "
                            "last heartbeat until this runner counts as dead, e.g. 30: "
                            "then its waiting jobs go back to the queue and the hub fails "
                            "its running notebooks. Shorter notices a crash sooner; too "
                            "short, and a runner slowed by load is taken for dead.")
    heartbeat_interval = Float(float(registry.HEARTBEAT_INTERVAL), config=True,
                               help="Seconds between heartbeats, e.g. 10; well below "
                               "heartbeat_ttl (a third of it leaves two beats to miss).")
    shutdown_timeout = Float(60.0, config=True, help="Seconds this runner takes on SIGTERM "
                             "to hand back waiting jobs, stop its notebooks and deregister, "
                             "e.g. 60; past it, it exits and others reap what it held.")

    @validate("reap_interval", "shutdown_timeout", "heartbeat_ttl", "heartbeat_interval")
    def _check_positive_timing(self, proposal) -> float:
        if proposal.value <= 0:
            raise ValueError(f"{proposal.trait.name} must be greater than 0")
        return proposal.value

    @validate("orphan_grace")
    def _check_orphan_grace(self, proposal) -> float:
        if proposal.value < 0:
            raise ValueError("orphan_grace must not be negative")
        return proposal.value

    image_budget = ByteSize(0, config=True, help="Disk budget for the images this "
                                     "runner built or launched, in bytes or with a K/M/G/T "
                                     "suffix, e.g. 50G. Past it, images are removed least "
                                     "recently launched first. 0: no limit.")

    # -- what a notebook container may do (see containers.py and network.py) ------
    pids_limit = Integer(1024, config=True, help="Processes (and threads) one notebook "
                         "container may have at once, e.g. 1024; a fork bomb stops there. "
                         "0: no limit.")
    default_mem_limit = ByteSize(2 * 1024 ** 3, config=True, help="Memory (and "
                                          "memory+swap) limit of a notebook whose launch "
                                          "sets none (the hub's mem_limit), in bytes or with "
                                          "a K/M/G/T suffix, e.g. 2G. 0: no limit.")
    default_cpu_limit = Float(1.0, config=True, help="CPUs a notebook whose launch sets no "
                              "cpu_limit may use, e.g. 1.5. 0: no limit.")
    notebook_network = Unicode("booklab", config=True, help="Docker network (and bridge "
                               "interface) the runner creates for notebooks in bridge mode, "
                               "with container-to-container traffic off; 1-15 characters.")
    notebook_subnet = Unicode("", config=True, help="IPv4 subnet of that network, e.g. "
                              "10.213.0.0/24 (default: Docker picks one).")
    firewall = Bool(True, config=True, help="Keep the iptables rules that stop notebooks "
                    "(bridge mode) from reaching this host, Redis and notebook_deny "
                    "(needs root or CAP_NET_ADMIN).")
    notebook_allow = List(Unicode(), config=True, help="Destinations notebooks may reach even "
                          "on this host or in notebook_deny, as IPv4ADDRESS:PORT[/udp], e.g. "
                          "the hub API when the hub runs on this machine: 10.0.0.12:8081.")
    notebook_deny = List(Unicode(), config=True, help="More IPv4 networks notebooks may not "
                         "reach (besides this host and Redis), e.g. 10.0.0.0/24 for the "
                         "runners' own network.")

    @validate("notebook_network")
    def _check_notebook_network(self, proposal) -> str:
        return check_name(proposal.value)

    @validate("notebook_subnet")
    def _check_notebook_subnet(self, proposal) -> str:
        if proposal.value:
            ipaddress.IPv4Network(proposal.value)  # ValueError names the problem
        return proposal.value

    @validate("notebook_allow")
    def _check_notebook_allow(self, proposal) -> list[str]:
        for item in proposal.value:
            parse_allow(item)
        return proposal.value

    @validate("notebook_deny")
    def _check_notebook_deny(self, proposal) -> list[str]:
        for item in proposal.value:
            parse_deny(item)
        return proposal.value

    def container_policy(self) -> ContainerPolicy:
        return ContainerPolicy(pids_limit=self.pids_limit,
                               default_mem_limit=int(self.default_mem_limit or 0),
                               default_cpu_limit=self.default_cpu_limit)

    def notebook_net(self) -> NotebookNetwork:
        return NotebookNetwork(
            None, self.notebook_network, self.notebook_subnet, self.firewall,
            allow=[parse_allow(a) for a in self.notebook_allow],
            deny=redis_rules(self.redis_url) + [parse_deny(d) for d in self.notebook_deny])

    aliases = {
        "redis-url": "RunnerApp.redis_url",
        "runner-id": "RunnerApp.runner_id",
        "advertise-host": "RunnerApp.advertise_host",
        "label": "RunnerApp.labels",
        "slots": "RunnerApp.slots",
        "work-dir": "RunnerApp.work_dir",
        "key-prefix": "RunnerApp.key_prefix",
        "known-hosts": "RunnerApp.known_hosts",
        "image-budget": "RunnerApp.image_budget",
        "reap-interval": "RunnerApp.reap_interval",
        "orphan-grace": "RunnerApp.orphan_grace",
        "shutdown-timeout": "RunnerApp.shutdown_timeout",
        "heartbeat-ttl": "RunnerApp.heartbeat_ttl",
        "heartbeat-interval": "RunnerApp.heartbeat_interval",
        "pids-limit": "RunnerApp.pids_limit",
        "default-mem-limit": "RunnerApp.default_mem_limit",
        "default-cpu-limit": "RunnerApp.default_cpu_limit",
        "notebook-network": "RunnerApp.notebook_network",
        "notebook-subnet": "RunnerApp.notebook_subnet",
        "notebook-allow": "RunnerApp.notebook_allow",
        "notebook-deny": "RunnerApp.notebook_deny",
        "gitlab-url": "RunnerApp.gitlab_url",
        "hub-url": "RunnerApp.hub_url",
        "log-level": "Application.log_level",
    }

    flags = {
        **Application.flags,
        "no-firewall": ({"RunnerApp": {"firewall": False}},
                        "Leave iptables alone (then firewall the notebook network yourself)."),
    }

    def start(self) -> None:
        try:
            check_runner_token(self.runner_token)
        except ValueError as e:
            self.exit(f"booklab-runner: {e} (set $BOOKLAB_RUNNER_TOKEN)")
        if self.heartbeat_interval >= self.heartbeat_ttl:
            self.exit(f"booklab-runner: heartbeat_interval ({self.heartbeat_interval:g} s) "
                      f"must be shorter than heartbeat_ttl ({self.heartbeat_ttl} s)")
        logging.basicConfig(level=self.log_level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        asyncio.run(self._main())

    async def _main(self) -> None:
        runner = Runner(self)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stopping.set)
        await runner.run()


def _read(path: str) -> str:
    if not path:
        return ""
    with open(path) as f:
        return f.read()


def main() -> None:
    RunnerApp.launch_instance()
