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
# KEYS: heartbeat of that runner, its claimed list, job, jobs index, log, the queue
# of the job's profile, that queue's wake list.
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
  redis.call('DEL', KEYS[7])
  redis.call('RPUSH', KEYS[7], '1')
  return 'requeued'
end
if redis.call('HGET', KEYS[3], 'runner') ~= ARGV[5] then drop() return 'moved' end
if ARGV[6] == 'requeue' and S.early[state] then
  drop()
  redis.call('HSET', KEYS[3], 'state', S.queued, 'runner', '', 'updated', ARGV[2])
  entry(S.queued)
  redis.call('RPUSH', KEYS[6], ARGV[1])
  redis.call('DEL', KEYS[7])
  redis.call('RPUSH', KEYS[7], '1')
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

# Queue a job at its fair place (docs/protocol.md, "Fair share").
# KEYS: the profile's queue, its fair hash, its wake list.  ARGV: job id, user.
# The job's round is the round being served (the highest claimed so far), or one
# more than its user's last queued job if that is later: a user's second job waits
# behind everyone's first. The list stays
# ordered by round from the right (claimed next) to the left; within a round, by
# arrival. Queued jobs without a round (handed back) count as round 0: in front.
ENQUEUE_LUA = """
local f = KEYS[2]
local last = 0
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
local rounds = {}
for i, id in ipairs(ids) do
  local got = redis.call('HMGET', f, 'j:' .. id, 'u:' .. id)
  rounds[i] = tonumber(got[1] or '0')
  if got[2] == ARGV[2] and rounds[i] > last then last = rounds[i] end
end
local r = math.max(tonumber(redis.call('HGET', f, 'round') or '0'), last + 1)
local pivot = false
for i, id in ipairs(ids) do  -- from the left end: the job claimed last
  if rounds[i] <= r then pivot = id break end
end
if pivot then redis.call('LINSERT', KEYS[1], 'BEFORE', pivot, ARGV[1])
else redis.call('RPUSH', KEYS[1], ARGV[1]) end
redis.call('HSET', f, 'j:' .. ARGV[1], r, 'u:' .. ARGV[1], ARGV[2])
redis.call('DEL', KEYS[3])
redis.call('RPUSH', KEYS[3], '1')
return r
"""

# Claim the next job of the first profile queue that has one, atomically.
# KEYS: the runner's claimed list, then per profile it serves (in its order of
# preference): queue, fair hash, wake list.  ARGV: (none)
# The job id moves into the claimed list in the same step (LMOVE), so no job is
# claimed twice and none is lost. Afterwards every queue named keeps exactly one
# wake-up token while it holds jobs and none when empty: a runner that was woken by
# one profile's token but claimed another profile's job leaves the token there for
# the next runner (no lost wake-up).
CLAIM_LUA = """
local got, gi = false, 0
for i = 1, (#KEYS - 1) / 3 do
  local id = redis.call('LMOVE', KEYS[3 * i - 1], KEYS[1], 'RIGHT', 'LEFT')
  if id then got, gi = id, i break end
end
if got then
  local f = KEYS[3 * gi]
  local r = tonumber(redis.call('HGET', f, 'j:' .. got) or '0')
  redis.call('HDEL', f, 'j:' .. got, 'u:' .. got)
  if r > tonumber(redis.call('HGET', f, 'round') or '0') then
    redis.call('HSET', f, 'round', r)
  end
end
for i = 1, (#KEYS - 1) / 3 do
  local w = KEYS[3 * i + 1]
  if redis.call('LLEN', KEYS[3 * i - 1]) > 0 then
    if redis.call('LLEN', w) == 0 then redis.call('RPUSH', w, '1') end
  else
    redis.call('DEL', w)
  end
end
return got
"""

# Take a job id out of its queue and forget its fair-share round.
# KEYS: the profile's queue, its fair hash.  ARGV: job id.
UNQUEUE_LUA = """
redis.call('HDEL', KEYS[2], 'j:' .. ARGV[1], 'u:' .. ARGV[1])
return redis.call('LREM', KEYS[1], 0, ARGV[1])
"""

# Hand a job back to the front of its queue, with a wake-up token.
# KEYS: the profile's queue, its wake list.  ARGV: job id.
FRONT_LUA = """
if not redis.call('LPOS', KEYS[1], ARGV[1]) then redis.call('RPUSH', KEYS[1], ARGV[1]) end
redis.call('DEL', KEYS[2])
return redis.call('RPUSH', KEYS[2], '1')
"""
