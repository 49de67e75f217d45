"""Job records, their state machine, the queue and the per-job log.

A *job* is one notebook server: the hub creates it, a runner claims it,
fetches and builds the repository, runs the container and stops it again.
Both ends use the functions here (with ``redis.asyncio``), so the protocol
lives in one module next to :mod:`booklab_spawner.keys`.

State machine::

    queued -> claimed -> fetching -> building -> starting -> running
       |         |           |           |           |          |
       +---------+-----------+-----------+-----------+----------+--> stopping -> stopped
       +---------+-----------+-----------+-----------+----------+--> failed
    claimed/fetching/building/starting -> queued   (handed back by a runner)
    queued/running -> stopped                      (cancelled before a claim / exited by itself)

A job is ``queued`` until a runner's ``queued -> claimed`` succeeds, even while
its id already sits in that runner's ``claimed:<runner>`` list (BLMOVE and the
transition are two steps): the hub stops such a job with ``queued -> stopped``
and the runner, whose claim is then refused, drops the id and starts nothing.

Every change of state is compare-and-set in a Lua script that also updates the
``jobs`` index and appends a ``state`` entry to the job's log stream, so a
watcher of the log sees every state change in order with the log lines.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis.asyncio as aioredis

from .exceptions import InvalidTransition, JobNotFound
from .jobscripts import (
    CLAIM_LUA,
    ENQUEUE_LUA,
    FRONT_LUA,
    NOTE_LUA,
    REAP_LUA,
    TRANSITION_LUA,
    UNQUEUE_LUA,
)
from .keys import DEFAULT_PROFILE, Keys


class State(str, Enum):
    """A job's state; the value is what Redis stores (``job:<id>`` field ``state``)."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    FETCHING = "fetching"
    BUILDING = "building"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    def __str__(self) -> str:  # the same on every Python: "queued", not "State.QUEUED"
        return self.value


QUEUED, CLAIMED, FETCHING, BUILDING, STARTING, RUNNING = (
    State.QUEUED, State.CLAIMED, State.FETCHING, State.BUILDING, State.STARTING, State.RUNNING,
)
STOPPING, STOPPED, FAILED = State.STOPPING, State.STOPPED, State.FAILED

# The groups, defined here once (the Lua scripts get them as ARGV, see _LUA_STATES):
EARLY = (CLAIMED, FETCHING, BUILDING, STARTING)  # on a runner, not running yet: can go back
ACTIVE = (*EARLY, RUNNING)  # a runner holds it
TERMINAL = (STOPPED, FAILED)  # final: nothing moves it any more
STATES = tuple(State)

TRANSITIONS: dict[str, tuple[str, ...]] = {
    QUEUED: (CLAIMED, STOPPING, STOPPED, FAILED),
    CLAIMED: (FETCHING, QUEUED, STOPPING, FAILED),
    FETCHING: (BUILDING, QUEUED, STOPPING, FAILED),
    BUILDING: (STARTING, QUEUED, STOPPING, FAILED),
    STARTING: (RUNNING, QUEUED, STOPPING, FAILED),
    RUNNING: (STOPPING, STOPPED, FAILED),
    STOPPING: (STOPPED, FAILED),
    STOPPED: (),
    FAILED: (),
}

# how far along a launch is, for JupyterHub's progress bar
PROGRESS = {QUEUED: 5, CLAIMED: 10, FETCHING: 20, BUILDING: 40, STARTING: 80, RUNNING: 100}

LOG_MAXLEN = 20000  # entries kept per job log (approximate trim)
# phase of the log line with which the hub says it renewed a job's clone credential
# (a job handed back after its fetch; the next runner waits for this line)
CLONE_RENEWED = "clone-renewed"
JOB_TTL = 7 * 24 * 3600  # finished jobs and their logs expire after a week

# how many index entries one prune looks at (the index is pruned a batch at a time)
PRUNE_BATCH = 500

# the states the scripts below need, from State and its groups (no state literal in Lua)
_LUA_STATES = json.dumps({
    "queued": QUEUED.value, "failed": FAILED.value,
    "early": {s.value: True for s in EARLY}, "final": {s.value: True for s in TERMINAL},
})

def start_timeout_message(seconds: float) -> str:
    """Why a launch failed in the ``starting`` phase. Hub and runner both time that
    phase with runners.container_start_timeout and either may notice first: one text,
    so the person reads the same whichever wrote the job's error."""
    return (f"The notebook server did not start within the container start timeout "
            f"({seconds:g} s): check the build log for errors of jupyterhub-singleuser, "
            "or ask the hub's operator to raise runners.container_start_timeout")


def new_job_id() -> str:
    """A random, URL- and key-safe job id."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + secrets.token_hex(6)


@dataclass
class LogEntry:
    """One entry of a job's log stream."""

    id: str  # the stream id, usable as SSE ``Last-Event-ID``
    kind: str  # "log" or "state"
    message: str
    state: str = ""  # for kind == "state": the new state
    phase: str = ""  # for kind == "log": the phase that wrote it
    ts: float = 0.0

    @classmethod
    def from_stream(cls, entry_id: str, fields: dict[str, str]) -> LogEntry:
        return cls(
            id=entry_id,
            kind=fields.get("kind", "log"),
            message=fields.get("message", ""),
            state=fields.get("state", ""),
            phase=fields.get("phase", ""),
            ts=float(fields.get("ts") or 0),
        )

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", None)}


class JobStore:
    """The job protocol over one ``redis.asyncio`` client (decode_responses=True)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys):
        self.redis = redis
        self.keys = keys
        self._transition = redis.register_script(TRANSITION_LUA)
        self._reap = redis.register_script(REAP_LUA)
        self._note = redis.register_script(NOTE_LUA)
        self._enqueue = redis.register_script(ENQUEUE_LUA)
        self._claim = redis.register_script(CLAIM_LUA)
        self._unqueue = redis.register_script(UNQUEUE_LUA)
        self._front = redis.register_script(FRONT_LUA)
        self._migrated = False  # protocol 2's status hash moved into the index yet?

    # -- records ------------------------------------------------------------
    async def create(self, job_id: str, fields: dict[str, Any], secret_blob: str) -> None:
        """Write a new job record in state ``queued`` plus its encrypted secrets, and queue
        it at its fair place in the queue of its ``profile`` (field; default: the
        default profile's queue), behind every other user's job of the same round."""
        now = str(time.time())
        record = {k: _encode(v) for k, v in fields.items()}
        record.update(id=job_id, state=QUEUED, created=now, updated=now)
        k = self.keys
        profile = record.get("profile") or DEFAULT_PROFILE
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.job(job_id), mapping=record)
            pipe.set(k.token(job_id), secret_blob, ex=JOB_TTL)
            pipe.zadd(k.jobs, {job_id: float(now)})
            pipe.xadd(k.log(job_id), _state_entry(QUEUED, "Queued, waiting for a runner", now),
                      maxlen=LOG_MAXLEN, approximate=True)
            await self._enqueue(keys=[k.queue_of(profile), k.fair(profile), k.wake(profile)],
                                args=[job_id, record.get("user", "")], client=pipe)
            await pipe.execute()
        await self.prune(float(now))  # a batch at a time, so the index never grows

    async def get(self, job_id: str) -> dict[str, str]:
        record = await self.redis.hgetall(self.keys.job(job_id))
        if not record:
            raise JobNotFound(f"job {job_id} not found")
        return record

    async def find(self, job_id: str) -> dict[str, str]:
        """The job record, or ``{}`` when there is none (never created, or expired)."""
        return await self.redis.hgetall(self.keys.job(job_id))

    async def find_many(self, job_ids: list[str]) -> list[dict[str, str]]:
        """:meth:`find` for many jobs in one round trip, in the order given."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
            return await pipe.execute()

    async def state(self, job_id: str) -> str | None:
        return await self.redis.hget(self.keys.job(job_id), "state")

    async def note(self, job_id: str, **fields: Any) -> bool:
        """Set fields of an existing record that are no state change (e.g. the id of a
        job's deploy key); False, and nothing written, if the job is gone."""
        return bool(await self._note(keys=[self.keys.job(job_id)],
                                     args=[x for kv in encode_fields(fields).items()
                                           for x in kv]))

    async def exists(self, job_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.job(job_id)))

    async def secrets(self, job_id: str) -> str | None:
        return await self.redis.get(self.keys.token(job_id))

    async def replace_secrets(self, job_id: str, secret_blob: str) -> bool:
        """Overwrite an existing ``token:<job>`` (same TTL), e.g. without the clone
        credential once the fetch is over; False if the key is gone."""
        return bool(await self.redis.set(self.keys.token(job_id), secret_blob, xx=True,
                                         keepttl=True))

    async def transition(
        self, job_id: str, new_state: str, message: str = "",
        allowed_from: Iterable[str] | None = None, **fields: Any,
    ) -> str:
        """Move a job to ``new_state`` if the state machine allows it; returns the old state.

        ``allowed_from`` narrows the allowed source states (e.g. a runner only
        moves a job *it* holds forward). Raises InvalidTransition or JobNotFound.
        """
        sources = [s for s, targets in TRANSITIONS.items() if new_state in targets]
        if allowed_from is not None:
            sources = [s for s in sources if s in set(allowed_from)]
        args: list[Any] = [job_id, new_state, str(time.time()), message, LOG_MAXLEN,
                           len(sources), *sources]
        for name, value in fields.items():
            args += [name, _encode(value)]
        k = self.keys
        ok, current = await self._transition(keys=[k.job(job_id), k.jobs, k.log(job_id)],
                                             args=args)
        if ok == -1:
            raise JobNotFound(f"job {job_id} not found")
        if ok == 0:
            raise InvalidTransition(job_id, current, new_state)
        if new_state in TERMINAL:
            await self._expire(job_id)
        return current

    async def move(self, job_id: str, new_state: str, message: str = "",
                   allowed_from: Iterable[str] | None = None, **fields: Any) -> str | None:
        """:meth:`transition` for callers to whom a refused move is no news: the old
        state, or None when the job is gone or its state cannot go to ``new_state``."""
        try:
            return await self.transition(job_id, new_state, message, allowed_from, **fields)
        except (InvalidTransition, JobNotFound):
            return None

    async def fail(self, job_id: str, reason: str, exit_code: int = 1,
                   allowed_from: Iterable[str] | None = None) -> bool:
        """Move a job that is not over to ``failed`` with ``reason`` as its error; False
        if it had ended already (or is gone)."""
        return await self.move(job_id, FAILED, reason, allowed_from, error=reason,
                               exit_code=str(exit_code or 1)) is not None

    async def request_stop(self, job_id: str, message: str) -> tuple[str, dict[str, str]]:
        """Stop a job wherever it is; returns what happened and the record as last read.

        ``"cancelled"``: it was queued and is stopped now (see :meth:`cancel_queued`);
        ``"asked"``: it was on a runner, is ``stopping`` now and its runner was sent a
        stop command; ``"stopping"``: a stop was under way already (the command is
        sent again); ``"ended"``: it
        was over (or is gone); ``"stuck"``: it kept going back to the queue, or names
        no runner (the caller decides: usually fail it).
        """
        job: dict[str, str] = {}
        for _turn in range(3):  # handed back to the queue meanwhile: cancel it then
            if await self.cancel_queued(job_id):
                return "cancelled", await self.find(job_id)
            moved = await self.move(job_id, STOPPING, message, allowed_from=ACTIVE)
            job = await self.find(job_id)
            state, runner = job.get("state"), job.get("runner", "")
            if state is None or state in TERMINAL:
                return "ended", job
            if state == STOPPING and runner:  # (asked again: a lost command does no harm)
                await self.send_command(runner, {"op": "stop", "job": job_id})
                return ("asked" if moved is not None else "stopping"), job
            if state != QUEUED:
                break
        return "stuck", job

    # -- the index of jobs ---------------------------------------------------------
    async def recent(self, limit: int) -> list[str]:
        """The ids of the ``limit`` jobs whose state changed last, newest first."""
        if not self._migrated:
            await self.migrate_legacy_status()
        return await self.redis.zrevrange(self.keys.jobs, 0, limit - 1)

    async def prune(self, now: float | None = None, batch: int = PRUNE_BATCH) -> int:
        """Drop index entries older than :data:`JOB_TTL` whose record has expired (at
        most ``batch`` per call); returns how many went. A record that still exists
        (a long-running notebook) keeps its entry."""
        cutoff = (time.time() if now is None else now) - JOB_TTL
        k = self.keys
        old = await self.redis.zrangebyscore(k.jobs, "-inf", cutoff, start=0, num=batch)
        if not old:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in old:
                pipe.exists(k.job(job_id))
            alive = await pipe.execute()
        gone = [job_id for job_id, there in zip(old, alive, strict=True) if not there]
        if gone:
            await self.redis.zrem(k.jobs, *gone)
        return len(gone)

    async def migrate_legacy_status(self) -> int:
        """Move protocol 2's ``status`` hash into the index (each job at the time of
        its last change), then delete it; idempotent, returns the entries moved."""
        k = self.keys
        moved = 0
        async for job_id, _state in self.redis.hscan_iter(k.legacy_status, count=PRUNE_BATCH):
            when = await self.redis.hmget(k.job(job_id), "updated", "created")
            score = next((float(t) for t in when if t), None)
            if score is not None:
                moved += await self.redis.zadd(k.jobs, {job_id: score}, nx=True)
            await self.redis.hdel(k.legacy_status, job_id)
        await self.redis.delete(k.legacy_status)
        self._migrated = True
        return moved

    async def _expire(self, job_id: str) -> None:
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.expire(k.job(job_id), JOB_TTL)
            pipe.expire(k.log(job_id), JOB_TTL)
            pipe.delete(k.token(job_id))  # secrets are useless once the job is over
            await pipe.execute()

    # -- queue ----------------------------------------------------------------
    async def claim(self, runner_id: str, timeout: float,
                    profiles: Iterable[str] = (DEFAULT_PROFILE,)) -> str | None:
        """Block up to ``timeout`` s for a job queued for one of ``profiles`` (in order
        of preference); move it atomically to this runner's claimed list.

        The claim script moves the id with LMOVE: a job id is in exactly one list at
        any time, so no job is claimed twice and none is lost. With nothing to claim
        the runner blocks (BLPOP) on the profiles' wake-up tokens, which the hub
        pushes with every job; the script keeps one token per non-empty queue, so a
        token taken by a runner that then claimed another profile's job wakes the
        next runner (no polling, no lost wake-up)."""
        names = list(dict.fromkeys(profiles))
        if not names:  # a runner whose labels satisfy no profile: nothing to wait on
            await asyncio.sleep(timeout)
            return None
        k = self.keys
        script_keys = [k.claimed(runner_id)]
        for name in names:
            script_keys += [k.queue_of(name), k.fair(name), k.wake(name)]
        wakes = [k.wake(name) for name in names]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            job_id = await self._claim(keys=script_keys, args=[])
            left = deadline - loop.time()
            if job_id or left <= 0:
                return job_id or None
            await self.redis.blpop(wakes, timeout=max(left, 0.01))

    async def profile_of(self, job_id: str) -> str:
        """The launch profile of a job (the default one when it names none)."""
        return await self.redis.hget(self.keys.job(job_id), "profile") or DEFAULT_PROFILE

    async def release(self, runner_id: str, job_id: str) -> None:
        """Drop a job from a runner's claimed list (finished, or handed back)."""
        await self.redis.lrem(self.keys.claimed(runner_id), 0, job_id)

    async def requeue(self, runner_id: str, job_id: str, message: str) -> None:
        """Hand a claimed job back to the front of its queue."""
        await self.transition(job_id, QUEUED, message, runner="")
        profile = await self.profile_of(job_id)
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(k.claimed(runner_id), 0, job_id)
            await self._front(keys=[k.queue_of(profile), k.wake(profile)], args=[job_id],
                              client=pipe)  # RIGHT end is claimed next
            await pipe.execute()

    async def unqueue(self, job_id: str) -> None:
        """Take a job id out of its queue (its state is the caller's business)."""
        profile = await self.profile_of(job_id)
        await self._unqueue(keys=[self.keys.queue_of(profile), self.keys.fair(profile)],
                            args=[job_id])

    async def queued(self, profile: str = DEFAULT_PROFILE) -> list[str]:
        """The job ids queued for ``profile``, the one claimed next first."""
        return list(reversed(await self.redis.lrange(self.keys.queue_of(profile), 0, -1)))

    async def claimed_by(self, runner_id: str) -> list[str]:
        """The job ids in ``runner_id``'s claimed list."""
        return await self.redis.lrange(self.keys.claimed(runner_id), 0, -1)

    async def queue_position(self, job_id: str) -> int | None:
        """1 for the job that is claimed next in its profile's queue, None if not queued.
        Fair share decides the order, so this is the place a runner reaches it at."""
        queue = self.keys.queue_of(await self.profile_of(job_id))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.llen(queue)
            pipe.lpos(queue, job_id)
            length, pos = await pipe.execute()
        return None if pos is None else length - pos

    async def cancel_queued(self, job_id: str) -> bool:
        """Stop a job that is still ``queued``; False if it is in any other state.

        The state decides, not the queue list: a runner's BLMOVE may already have
        moved the id into its ``claimed:<runner>`` list without the job being
        ``queued -> claimed`` yet. That runner's claim is then refused (the job is
        no longer ``queued``) and it drops the id without starting anything.
        """
        if await self.move(job_id, STOPPED, "Cancelled before a runner took it",
                           allowed_from=[QUEUED]) is None:
            return False
        await self.unqueue(job_id)
        return True

    async def announce_positions(self, limit: int = 20,
                                 profiles: Iterable[str] = (DEFAULT_PROFILE,)) -> None:
        """Tell the next ``limit`` queued jobs of each profile where they stand (a log
        line each)."""
        for profile in dict.fromkeys(profiles):
            waiting = await self.redis.lrange(self.keys.queue_of(profile), -limit, -1)
            for position, job_id in enumerate(reversed(waiting), start=1):
                await self.log(job_id, f"Position in the queue: {position}", QUEUED)

    async def reap(self, runner_id: str, job_id: str, message: str, mode: str = "requeue",
                   require_dead: bool = True) -> str:
        """Take ``job_id`` from ``runner_id``'s claimed list: requeue it (if it had
        not started running) or fail it (mode "fail"), in one atomic step.

        With ``require_dead`` nothing happens while the runner has a heartbeat.
        Returns "requeued", "failed", "gone", "moved", "alive" or the job's
        state when it was left alone (a running job, with mode "requeue").
        """
        k = self.keys
        profile = await self.profile_of(job_id)
        result = await self._reap(
            keys=[k.heartbeat(runner_id), k.claimed(runner_id), k.job(job_id), k.jobs,
                  k.log(job_id), k.queue_of(profile), k.wake(profile)],
            args=[job_id, str(time.time()), message, LOG_MAXLEN, runner_id, mode,
                  "1" if require_dead else "0", _LUA_STATES])
        if result == "failed":
            await self._expire(job_id)
        return result

    async def send_command(self, runner_id: str, command: dict[str, Any]) -> None:
        await self.redis.rpush(self.keys.commands(runner_id), json.dumps(command))

    # -- the git proxy's one-time grant ------------------------------------------
    async def grant_fetch(self, job_id: str, digest: str, ttl: int) -> None:
        """Store the hash of a job's git proxy secret (see handlers/gitproxy.py)."""
        await self.redis.set(self.keys.git_grant(job_id), digest, ex=ttl)

    async def fetch_grant(self, job_id: str) -> str | None:
        return await self.redis.get(self.keys.git_grant(job_id))

    async def revoke_fetch(self, job_id: str) -> None:
        await self.redis.delete(self.keys.git_grant(job_id))

    # -- log --------------------------------------------------------------------
    async def log(self, job_id: str, message: str, phase: str = "") -> str:
        """Append a log line (already scrubbed) to a job's log; returns its stream id."""
        return await self.redis.xadd(
            self.keys.log(job_id),
            {"kind": "log", "phase": phase, "message": message, "ts": str(time.time())},
            maxlen=LOG_MAXLEN, approximate=True,
        )

    async def last_log_id(self, job_id: str) -> str | None:
        """The stream id of a job's newest log entry (None: no log)."""
        last = await self.redis.xrevrange(self.keys.log(job_id), count=1)
        return last[0][0] if last else None

    async def read_log(self, job_id: str, after: str = "0-0", count: int = 500) -> list[LogEntry]:
        """Entries strictly after stream id ``after`` (replay from the start with the default)."""
        entries = await self.redis.xrange(self.keys.log(job_id), min=f"({after}"
                                          if after != "0-0" else "-", count=count)
        return [LogEntry.from_stream(i, f) for i, f in entries]

    async def follow_log(
        self, job_id: str, after: str = "0-0", block_ms: int = 5000,
        until: Iterable[str] = TERMINAL,
    ) -> AsyncIterator[LogEntry | None]:
        """Replay the log after ``after``, then follow it live.

        Yields ``None`` when ``block_ms`` passes without news (the caller may
        send a keepalive or check a deadline) and stops after a state entry
        whose state is in ``until``.
        """
        stop_states = set(until)
        key = self.keys.log(job_id)
        last = after
        while True:
            resp = await self.redis.xread({key: last}, block=block_ms, count=200)
            if not resp:
                yield None
                continue
            for entry_id, fields in resp[0][1]:
                last = entry_id
                entry = LogEntry.from_stream(entry_id, fields)
                yield entry
                if entry.kind == "state" and entry.state in stop_states:
                    return


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Job fields as stored in the record (strings as they are, the rest as JSON)."""
    return {k: _encode(v) for k, v in fields.items()}


def _encode(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _state_entry(state: str, message: str, now: str) -> dict[str, str]:
    return {"kind": "state", "state": state, "message": message, "ts": now}
