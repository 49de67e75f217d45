"""``booklab-runner``: the worker service on each Docker machine.

It needs a Redis URL and the runner token; everything else comes from the
``conf`` hash the hub publishes. :class:`RunnerApp` reads and checks the
runner's options; :class:`~.service.Runner` is the service it then runs
(claims, commands, recovery). See docs/runner.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import signal
import socket

from traitlets import Bool, Float, Integer, List, Unicode, default, validate
from traitlets.config import Application

from .. import __version__, registry
from ..crypto import check_runner_token
from ..keys import DEFAULT_PREFIX, check_id
from ..redis_client import default_url
from ..traits import ByteSize
from . import labels as runner_labels
from .containers import ContainerPolicy
from .network import NotebookNetwork, check_name, parse_allow, parse_deny, redis_rules
from .service import CLAIM_BLOCK, Runner  # noqa: F401 (CLAIM_BLOCK: tests, benchmarks)

log = logging.getLogger("booklab.runner")



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


def main() -> None:
    RunnerApp.launch_instance()
