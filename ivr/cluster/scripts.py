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

# KEYS: lease, checkpoint hash, log. ARGV: token, last applied entry id, model fingerprint, pickled state.
# Stores the checkpoint, then trims the log before the *previous* checkpoint's entry: readers a little behind the
# timekeeper keep one checkpoint interval of entries to read. ``trimmed`` keeps the newest entry id ever trimmed (a
# reader behind it missed entries). Returns 1 if written, 0 if a newer checkpoint is stored, -1 when the lease is not
# ours.
CHECKPOINT = """
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local previous = redis.call('HGET', KEYS[2], 'id')
if previous and not older(previous, ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], 'id', ARGV[2], 'fingerprint', ARGV[3], 'state', ARGV[4])
if previous then
  local newest = redis.call('XREVRANGE', KEYS[3], '(' .. previous, '-', 'COUNT', 1)
  if newest[1] then redis.call('HSET', KEYS[2], 'trimmed', newest[1][1]) end
  redis.call('XTRIM', KEYS[3], 'MINID', '=', previous)
end
return 1
"""
