"""Every Redis key Booklab uses, built in one place.

The hub and the runners share one Redis. All keys live behind one configurable
prefix (default ``booklab:``) so that a Redis can be shared with other tools,
or two Booklab installations can share one Redis. ``docs/protocol.md`` describes
who writes and who reads each key; keep the two in step.

Nothing else in Booklab formats a key string: import :class:`Keys`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "booklab:"
DEFAULT_PROFILE = "default"  # the launch profile of a launch that names none

# ids we generate ourselves; validated so that a key can never be built from
# something that contains a separator or whitespace.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]{0,64}:?$")


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe id for a key, else raise ValueError."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ValueError(f"invalid {kind} id: {value!r}")
    return value


@dataclass(frozen=True)
class Keys:
    """Builds key names from one prefix.

    >>> Keys("bl:").job("abc")
    'bl:job:abc'
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"invalid Redis key prefix: {self.prefix!r}")

    # -- shared configuration -------------------------------------------------
    @property
    def conf(self) -> str:
        """HASH the hub publishes for runners (``field -> JSON value``)."""
        return f"{self.prefix}conf"

    # -- runners --------------------------------------------------------------
    @property
    def runners(self) -> str:
        """SET of the ids of runners that registered."""
        return f"{self.prefix}runners"

    def heartbeat(self, runner_id: str) -> str:
        """STRING expiring after the runner's heartbeat_ttl (30 s by default); present
        while the runner is alive."""
        return f"{self.prefix}heartbeat:{check_id('runner', runner_id)}"

    def runner(self, runner_id: str) -> str:
        """HASH describing a runner (host, slots, version, started)."""
        return f"{self.prefix}runner:{check_id('runner', runner_id)}"

    def claimed(self, runner_id: str) -> str:
        """LIST of job ids a runner has claimed and not yet finished."""
        return f"{self.prefix}claimed:{check_id('runner', runner_id)}"

    def commands(self, runner_id: str) -> str:
        """LIST of commands (JSON) for one runner, e.g. stop a job."""
        return f"{self.prefix}commands:{check_id('runner', runner_id)}"

    def images(self, runner_id: str) -> str:
        """HASH ``image name -> time it was last launched`` of images a runner holds."""
        return f"{self.prefix}images:{check_id('runner', runner_id)}"

    # -- builds ---------------------------------------------------------------
    def build_lock(self, image_hash: str) -> str:
        """STRING ``<runner> <job>`` with a short TTL: one build per image at a time."""
        return f"{self.prefix}build_lock:{check_id('image hash', image_hash)}"

    # -- jobs -----------------------------------------------------------------
    @property
    def queue(self) -> str:
        """LIST of queued job ids; LPUSH by the hub, BLMOVE by runners."""
        return f"{self.prefix}queue"

    def queue_of(self, profile: str) -> str:
        """LIST of the queued job ids of one launch profile, in the order runners claim
        them (right end next): :attr:`queue` for the ``default`` profile,
        ``queue:<profile>`` for the others. The hub inserts each job at its fair place
        (``fair:<profile>``); runners take them with the claim script."""
        if profile == DEFAULT_PROFILE:
            return self.queue
        return f"{self.prefix}queue:{check_id('profile', profile)}"

    def fair(self, profile: str) -> str:
        """HASH of one profile queue's fair share: ``round`` (the highest round claimed
        so far), and per queued job ``j:<job>`` (its round) and ``u:<job>`` (its user)."""
        return f"{self.prefix}fair:{check_id('profile', profile)}"

    def wake(self, profile: str) -> str:
        """LIST holding at most one wake-up token while ``queue_of(profile)`` may hold
        jobs: idle runners block on the tokens of the profiles they serve (BLPOP)."""
        return f"{self.prefix}wake:{check_id('profile', profile)}"

    @property
    def jobs(self) -> str:
        """ZSET ``job id -> time of its last state change``: the index of jobs, newest
        last; entries whose record expired are pruned (``JobStore.prune``)."""
        return f"{self.prefix}jobs"

    @property
    def legacy_status(self) -> str:
        """HASH ``job id -> state`` of protocol 2 (the seed's ``status``), which grew
        forever; only read to migrate it into :attr:`jobs`, then deleted."""
        return f"{self.prefix}status"

    def job(self, job_id: str) -> str:
        """HASH holding one job record (see :mod:`booklab_spawner.jobs`)."""
        return f"{self.prefix}job:{check_id('job', job_id)}"

    def log(self, job_id: str) -> str:
        """STREAM of one job's log lines and state changes (replayable)."""
        return f"{self.prefix}log:{check_id('job', job_id)}"

    def token(self, job_id: str) -> str:
        """STRING: the job's secrets (notebook API token, clone credential), encrypted."""
        return f"{self.prefix}token:{check_id('job', job_id)}"

    def git_grant(self, job_id: str) -> str:
        """STRING: SHA-256 (hex) of the job's one-time fetch secret for the hub's read-only
        git proxy; TTL, deleted as soon as the job's fetch is over."""
        return f"{self.prefix}git_grant:{check_id('job', job_id)}"

    # -- the proxy (Traefik through Redis, written by the hub alone) ------------
    @property
    def traefik_root(self) -> str:
        """Root of Traefik's dynamic configuration (its Redis provider's ``rootkey``):
        ``<prefix>traefik/http/routers/...``. Traefik trusts every key under it."""
        return f"{self.prefix}traefik"

    @property
    def proxy_routes(self) -> str:
        """Root of jupyterhub-traefik-proxy's own records of the routes it added."""
        return f"{self.prefix}jupyterhub"

    # -- who may touch what (booklab_spawner/acl.py) --------------------------
    def runner_patterns(self) -> dict[str, str]:
        """Glob pattern -> ``"R"`` (read) or ``"RW"`` of every key a runner uses; a
        Redis ACL user for runners gets these and nothing else, so a runner host
        can neither touch the proxy's routes nor another prefix's keys. Patterns
        are safe globs: the prefix holds no ``*?[]\\``."""
        p = self.prefix
        return {
            f"{p}conf": "R",
            f"{p}runners": "RW", f"{p}heartbeat:*": "RW", f"{p}runner:*": "RW",
            f"{p}claimed:*": "RW", f"{p}commands:*": "RW", f"{p}images:*": "RW",
            f"{p}build_lock:*": "RW", f"{p}queue": "RW", f"{p}queue:*": "RW",
            f"{p}fair:*": "RW", f"{p}wake:*": "RW", f"{p}jobs": "RW",
            f"{p}job:*": "RW", f"{p}log:*": "RW", f"{p}token:*": "RW",
            f"{p}git_grant:*": "RW",
        }

    def all_patterns(self) -> list[str]:
        """Glob patterns matching every key Booklab may write (for cleanup tools)."""
        return [f"{self.prefix}*"]
