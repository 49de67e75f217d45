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
``status`` hash and appends a ``state`` entry to the job's log stream, so a
watcher of the log sees every state change in order with the log lines.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from .exceptions import InvalidTransition, JobNotFound
from .keys import Keys

QUEUED, CLAIMED, FETCHING, BUILDING, STARTING, RUNNING = (
    "queued", "claimed", "fetching", "building", "starting", "running",
)
STOPPING, STOPPED, FAILED = "stopping", "stopped", "failed"

ACTIVE = (CLAIMED, FETCHING, BUILDING, STARTING, RUNNING)
TERMINAL = (STOPPED, FAILED)
STATES = (QUEUED, *ACTIVE, STOPPING, *TERMINAL)

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

# KEYS: job, status, log.  ARGV: job id, new state, now, message, maxlen,
# n allowed-from states, the states..., then field/value pairs to set.
_TRANSITION_LUA = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {-1, ''} end
local n = tonumber(ARGV[6])
local ok = false
for i = 7, 6 + n do
  if ARGV[i] == cur then ok = true end
end
if not ok then return {0, cur} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated', ARGV[3])
for i = 7 + n, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*',
  'kind', 'state', 'state', ARGV[2], 'message', ARGV[4], 'ts', ARGV[3])
return {1, cur}
"""


# Hand a job of a dead (or restarted) runner back, or fail it, atomically.
# KEYS: heartbeat of that runner, its claimed list, job, status, log, queue.
# ARGV: job id, now, message, maxlen, runner id, mode ("requeue" | "fail"),
# "1" to require that the heartbeat is gone.
_REAP_LUA = """
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 'alive' end
local state = redis.call('HGET', KEYS[3], 'state')
local function drop() redis.call('LREM', KEYS[2], 0, ARGV[1]) end
local function entry(s)
  redis.call('HSET', KEYS[4], ARGV[1], s)
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*',
    'kind', 'state', 'state', s, 'message', ARGV[3], 'ts', ARGV[2])
end
if not state or state == 'stopped' or state == 'failed' then drop() return 'gone' end
if state == 'queued' then
  drop()
  if not redis.call('LPOS', KEYS[6], ARGV[1]) then redis.call('RPUSH', KEYS[6], ARGV[1]) end
  return 'requeued'
end
if redis.call('HGET', KEYS[3], 'runner') ~= ARGV[5] then drop() return 'moved' end
local early = state == 'claimed' or state == 'fetching' or state == 'building'
  or state == 'starting'
if ARGV[6] == 'requeue' and early then
  drop()
  redis.call('HSET', KEYS[3], 'state', 'queued', 'runner', '', 'updated', ARGV[2])
  entry('queued')
  redis.call('RPUSH', KEYS[6], ARGV[1])
  return 'requeued'
end
if ARGV[6] == 'fail' then
  drop()
  redis.call('HSET', KEYS[3], 'state', 'failed', 'updated', ARGV[2], 'error', ARGV[3],
    'exit_code', '1')
  entry('failed')
  return 'failed'
end
return state
"""


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
        self._transition = redis.register_script(_TRANSITION_LUA)
        self._reap = redis.register_script(_REAP_LUA)

    # -- records ------------------------------------------------------------
    async def create(self, job_id: str, fields: dict[str, Any], secret_blob: str) -> None:
        """Write a new job record in state ``queued`` plus its encrypted secrets, and queue it."""
        now = str(time.time())
        record = {k: _encode(v) for k, v in fields.items()}
        record.update(id=job_id, state=QUEUED, created=now, updated=now)
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.job(job_id), mapping=record)
            pipe.set(k.token(job_id), secret_blob, ex=JOB_TTL)
            pipe.hset(k.status, job_id, QUEUED)
            pipe.xadd(k.log(job_id), _state_entry(QUEUED, "Queued, waiting for a runner", now),
                      maxlen=LOG_MAXLEN, approximate=True)
            pipe.lpush(k.queue, job_id)
            await pipe.execute()

    async def get(self, job_id: str) -> dict[str, str]:
        record = await self.redis.hgetall(self.keys.job(job_id))
        if not record:
            raise JobNotFound(f"job {job_id} not found")
        return record

    async def state(self, job_id: str) -> str | None:
        return await self.redis.hget(self.keys.job(job_id), "state")

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
        ok, current = await self._transition(keys=[k.job(job_id), k.status, k.log(job_id)],
                                             args=args)
        if ok == -1:
            raise JobNotFound(f"job {job_id} not found")
        if ok == 0:
            raise InvalidTransition(job_id, current, new_state)
        if new_state in TERMINAL:
            await self._expire(job_id)
        return current

    async def _expire(self, job_id: str) -> None:
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.expire(k.job(job_id), JOB_TTL)
            pipe.expire(k.log(job_id), JOB_TTL)
            pipe.delete(k.token(job_id))  # secrets are useless once the job is over
            await pipe.execute()

    # -- queue ----------------------------------------------------------------
    async def claim(self, runner_id: str, timeout: float) -> str | None:
        """Block up to ``timeout`` s for a queued job; move it atomically to this runner.

        BLMOVE makes the hand-over atomic: a job id is in exactly one list at
        any time, so no job is claimed twice and none is lost.
        """
        return await self.redis.blmove(self.keys.queue, self.keys.claimed(runner_id),
                                       timeout, "RIGHT", "LEFT")

    async def release(self, runner_id: str, job_id: str) -> None:
        """Drop a job from a runner's claimed list (finished, or handed back)."""
        await self.redis.lrem(self.keys.claimed(runner_id), 0, job_id)

    async def requeue(self, runner_id: str, job_id: str, message: str) -> None:
        """Hand a claimed job back to the front of the queue."""
        await self.transition(job_id, QUEUED, message, runner="")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self.keys.claimed(runner_id), 0, job_id)
            pipe.rpush(self.keys.queue, job_id)  # RIGHT end is claimed next
            await pipe.execute()

    async def queue_position(self, job_id: str) -> int | None:
        """1 for the job that is claimed next, None if not queued."""
        length = await self.redis.llen(self.keys.queue)
        pos = await self.redis.lpos(self.keys.queue, job_id)
        return None if pos is None else length - pos

    async def cancel_queued(self, job_id: str) -> bool:
        """Stop a job that is still ``queued``; False if it is in any other state.

        The state decides, not the queue list: a runner's BLMOVE may already have
        moved the id into its ``claimed:<runner>`` list without the job being
        ``queued -> claimed`` yet. That runner's claim is then refused (the job is
        no longer ``queued``) and it drops the id without starting anything.
        """
        try:
            await self.transition(job_id, STOPPED, "Cancelled before a runner took it",
                                  allowed_from=[QUEUED])
        except (InvalidTransition, JobNotFound):
            return False
        await self.redis.lrem(self.keys.queue, 0, job_id)
        return True

    async def announce_positions(self, limit: int = 20) -> None:
        """Tell the next ``limit`` queued jobs where they stand (a log line each)."""
        waiting = await self.redis.lrange(self.keys.queue, -limit, -1)
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
        result = await self._reap(
            keys=[k.heartbeat(runner_id), k.claimed(runner_id), k.job(job_id), k.status,
                  k.log(job_id), k.queue],
            args=[job_id, str(time.time()), message, LOG_MAXLEN, runner_id, mode,
                  "1" if require_dead else "0"])
        if result == "failed":
            await self._expire(job_id)
        return result

    async def send_command(self, runner_id: str, command: dict[str, Any]) -> None:
        await self.redis.rpush(self.keys.commands(runner_id), json.dumps(command))

    # -- log --------------------------------------------------------------------
    async def log(self, job_id: str, message: str, phase: str = "") -> str:
        """Append a log line (already scrubbed) to a job's log; returns its stream id."""
        return await self.redis.xadd(
            self.keys.log(job_id),
            {"kind": "log", "phase": phase, "message": message, "ts": str(time.time())},
            maxlen=LOG_MAXLEN, approximate=True,
        )

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
