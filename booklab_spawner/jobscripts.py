"""The Lua scripts of the job store (:mod:`booklab_spawner.jobs`).

Each one is an atomic step of the protocol that docs/protocol.md describes; the
keys come as ``KEYS[]`` (built by :mod:`booklab_spawner.keys`) and no script
names a state itself: the states arrive as ARGV (``jobs._LUA_STATES``).
"""

TRANSITION_LUA = """
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
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*',
  'kind', 'state', 'state', ARGV[2], 'message', ARGV[4], 'ts', ARGV[3])
return {1, cur}
"""


# Hand a job of a dead (or restarted) runner back, or fail it, atomically.
# KEYS: heartbeat of that runner, its claimed list, job, jobs index, log, queue.
# ARGV: job id, now, message, maxlen, runner id, mode ("requeue" | "fail"),
# "1" to require that the heartbeat is gone, the states (_LUA_STATES).
REAP_LUA = """
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 'alive' end
local S = cjson.decode(ARGV[8])
local state = redis.call('HGET', KEYS[3], 'state')
local function drop() redis.call('LREM', KEYS[2], 0, ARGV[1]) end
local function entry(s)
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*',
    'kind', 'state', 'state', s, 'message', ARGV[3], 'ts', ARGV[2])
end
if not state or S.final[state] then drop() return 'gone' end
if state == S.queued then
  drop()
  if not redis.call('LPOS', KEYS[6], ARGV[1]) then redis.call('RPUSH', KEYS[6], ARGV[1]) end
  return 'requeued'
end
if redis.call('HGET', KEYS[3], 'runner') ~= ARGV[5] then drop() return 'moved' end
if ARGV[6] == 'requeue' and S.early[state] then
  drop()
  redis.call('HSET', KEYS[3], 'state', S.queued, 'runner', '', 'updated', ARGV[2])
  entry(S.queued)
  redis.call('RPUSH', KEYS[6], ARGV[1])
  return 'requeued'
end
if ARGV[6] == 'fail' then
  drop()
  redis.call('HSET', KEYS[3], 'state', S.failed, 'updated', ARGV[2], 'error', ARGV[3],
    'exit_code', '1')
  entry(S.failed)
  return 'failed'
end
return state
"""

# Set fields of a record that exists.  KEYS: job.  ARGV: field/value pairs.
NOTE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
