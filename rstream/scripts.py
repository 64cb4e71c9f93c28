"""The Lua scripts rstream runs, each a check and an action the server does in one step.

A check made by one command and an action taken by the next leaves a gap in which another
client can change what was checked: a consumer that heartbeats again, an entry acked, a group
created. Each script closes one such gap. `rstream.redisio` sends them; the keys and commands
they touch are listed there too. Scripts declare every key they touch (Redis Cluster).
"""
from __future__ import annotations

# "ms-seq" stream ids compared as decimal strings: Lua numbers are doubles, and a sequence
# number (or a millisecond time given explicitly) can pass 2^53.
_ID_LE = """
local function dec_cmp(x, y)
  if #x ~= #y then return #x < #y and -1 or 1 end
  if x == y then return 0 end
  return x < y and -1 or 1
end
local function id_le(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  local c = dec_cmp(ams, bms)
  if c ~= 0 then return c < 0 end
  return dec_cmp(aseq, bseq) <= 0
end
"""

_FIELDS = """
local function fields(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end
"""

# KEYS: stream. ARGV: group, start id, make_stream ('1'/'0'), resume id ('' on a first creation).
# Returns {'exists', last-delivered-id}, {'created', last-delivered-id, reason} or {'missing'}.
# reason: 'start' (created at the given id), 'new' (the stream is new to this consumer: from 0),
# 'resumed' (the stream survived: after the last id this consumer saw).
# The group is looked up before XGROUP CREATE is tried: a server at maxmemory refuses XGROUP
# CREATE (even for a group that exists) while reads and acks still work.
ENSURE_GROUP = _ID_LE + _FIELDS + """
local function last_delivered(groups)
  for _, g in ipairs(groups) do
    local f = fields(g)
    if f['name'] == ARGV[1] then return f['last-delivered-id'] end
  end
  return false
end
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if groups.err then
  if not string.find(groups.err, 'no such key', 1, true) then return groups end
  if ARGV[3] ~= '1' then return {'missing'} end
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  return {'created', '0-0', 'new'}
end
local found = last_delivered(groups)
if found then return {'exists', found} end
local start, reason = ARGV[2], 'start'
if ARGV[4] ~= '' then
  start, reason = '0', 'new'
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #first > 0 and id_le(first[1][1], ARGV[4]) then start, reason = ARGV[4], 'resumed' end
end
redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], start)
return {'created', last_delivered(redis.call('XINFO', 'GROUPS', KEYS[1])), reason}
"""

# KEYS: stream. ARGV: group, me, XPENDING start, XREADGROUP after, count. One page of this
# consumer's own pending entries with the delivery count each had before this read. A script,
# not MULTI/EXEC: a server at maxmemory refuses to queue commands in MULTI, but runs this.
REPLAY_PAGE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], '+', ARGV[5], ARGV[2])
local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[5],
                        'STREAMS', KEYS[1], ARGV[4])
return {pending, read}
"""

# KEYS: fence key. ARGV: this instance's token, ttl ms, registered ('1' once this instance has
# held the name). Returns 1 (held), 0 (not writable now, e.g. maxmemory: try again next beat)
# or the token of the instance that took the name over since (this one is fenced).
# The newest instance wins: one that never held the name takes it over; one that held it and
# finds another token was replaced by a later start.
FENCE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and ARGV[3] == '1' then return holder end
local ok = redis.pcall('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if type(ok) == 'table' and ok.err then return 0 end
return 1
"""

# KEYS: fence key. ARGV: token. Gives the name up at a clean stop, if this instance holds it:
# deleted, or where the ACL allows no DEL, expired at once.
UNFENCE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  local deleted = redis.pcall('DEL', KEYS[1])
  if type(deleted) == 'table' and deleted.err then redis.call('SET', KEYS[1], '', 'PX', 1) end
end
return 1
"""

# KEYS: stream. ARGV: group, dead consumer, dead-after ms, me, min-idle ms, id...
# XCLAIM only while the owner still looks dead: a consumer that was frozen (GC pause, SIGSTOP)
# and heartbeats again keeps the rest of its entries. Returns -1 when the owner is alive,
# else XCLAIM's reply (chunked: Lua's unpack has a small limit).
CLAIM_FROM_DEAD = _FIELDS + """
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = fields(c)
  if f['name'] == ARGV[2] then
    if f['idle'] <= tonumber(ARGV[3]) then return -1 end
    break
  end
end
local claimed = {}
for i = 6, #ARGV, 200 do
  local reply = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[4], ARGV[5],
                           unpack(ARGV, i, math.min(i + 199, #ARGV)))
  for _, entry in ipairs(reply) do claimed[#claimed + 1] = entry end
end
return claimed
"""

# XADD before XACK: a script error does not roll back earlier writes, so an XADD that fails
# (wrong key type, too many fields for Lua's unpack) must fail before the entry is acked.
# KEYS: stream, dead-letter stream. ARGV: group, id, delete ('1'/'0'), field, value, ...
DEAD_LETTER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
return 1
"""

# KEYS: stream. ARGV: group, consumer, min idle ms. XGROUP DELCONSUMER destroys a consumer's
# pending entries: only a consumer with none, and still idle, is removed.
DELCONSUMER = _FIELDS + """
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = fields(c)
  if f['name'] == ARGV[2] then
    if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return -1
"""
