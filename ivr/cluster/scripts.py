"""The Lua scripts of the cluster's log (ivr/cluster/log.py): the timekeeper lease and its fenced writes.

Each runs atomically in Redis, so "the lease still holds my token" and the
write it guards are one step: a timekeeper whose lease moved on (it paused
past the lease, or Redis expired it) cannot append, record a lost node or
write a checkpoint any more. A lease token is ``node:epoch``, the epoch from
``INCR`` on a counter, so two holders never share a token.
"""

from __future__ import annotations

# KEYS: lease, epoch counter. ARGV: node id, lease in ms. Returns the new token, or nil while the lease is held.
ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = ARGV[1] .. ':' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[2])
return token
"""

# KEYS: lease. ARGV: token, lease in ms. Returns 1 if renewed, 0 if the lease is not (or no longer) ours.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lease. ARGV: token. Returns 1 if released, 0 if it was not ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lease, log. ARGV: token, then the entry's field/value pairs. Returns the entry id, or nil when refused.
APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
"""

# KEYS: lease, log, set of nodes, the node's heartbeat key. ARGV: token, node id, the entry's field/value pairs.
# Returns the NodeLost entry's id; 0 if the node is alive or already recorded lost; -1 when the lease is not ours.
NODE_LOST = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 0 then return 0 end
redis.call('SREM', KEYS[3], ARGV[2])
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
"""

# KEYS: lease, checkpoint hash, log. ARGV: token, last applied entry id, model fingerprint, pickled state, its MAC,
# the id of a stored checkpoint the node refused ("" if none).
# Stores the checkpoint, then trims the log before the *previous* checkpoint's entry: readers a little behind the
# timekeeper keep one checkpoint interval of entries to read. ``trimmed`` keeps the newest entry id ever trimmed (a
# reader behind it missed entries). A refused previous checkpoint is replaced whatever id it claims, and nothing is
# trimmed after it (its id cannot be trusted). Returns 1 if written, 0 if a newer checkpoint is stored, -1 when the
# lease is not ours.
CHECKPOINT = """
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local previous = redis.call('HGET', KEYS[2], 'id')
if previous and ARGV[6] ~= '' and previous == ARGV[6] then
  redis.call('DEL', KEYS[2])
  previous = false
end
if previous and not string.match(previous, '^%d+-%d+$') then previous = false end
if previous and not older(previous, ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], 'id', ARGV[2], 'fingerprint', ARGV[3], 'state', ARGV[4], 'mac', ARGV[5])
if previous then
  local newest = redis.call('XREVRANGE', KEYS[3], '(' .. previous, '-', 'COUNT', 1)
  if newest[1] then redis.call('HSET', KEYS[2], 'trimmed', newest[1][1]) end
  redis.call('XTRIM', KEYS[3], 'MINID', '=', previous)
end
return 1
"""

# KEYS: generation counter, log. ARGV: the newest generation this node knows, its wall clock, the generations' hash
# prefix. Opens generation known+1 (its hash: the log's newest id as ``start``, ``opened``) and returns it, unless a
# newer one than ``known`` is open already: then returns minus that one's number (join it). A generation counter gone
# (Redis restarted empty) counts as 0.
START_GENERATION = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local known = tonumber(ARGV[1])
if current > known then return -current end
local generation = known + 1
redis.call('SET', KEYS[1], generation)
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local start = '0-0'
if newest[1] then start = newest[1][1] end
redis.call('HSET', ARGV[3] .. generation, 'start', start, 'opened', ARGV[2])
return generation
"""

# KEYS: a generation's hash. ARGV: node id, its part (JSON). Returns 1 if taken, 0 if the generation is sealed, -1 if
# it does not exist.
TAKE_PART = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'sealed') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'part:' .. ARGV[1], ARGV[2])
return 1
"""

# KEYS: lease, a generation's hash, log. ARGV: token, then the Rebuild entry's field/value pairs. Seals the
# generation and appends its Rebuild; returns the entry id, 0 if sealed already, -1 when the lease is not ours.
SEAL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('HEXISTS', KEYS[2], 'sealed') == 1 then return 0 end
redis.call('HSET', KEYS[2], 'sealed', '1')
redis.call('PEXPIRE', KEYS[2], 3600000)
return redis.call('XADD', KEYS[3], '*', unpack(ARGV, 2))
"""
