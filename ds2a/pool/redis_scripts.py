"""The shared pool's atomic steps, as Lua scripts run inside Redis.

Each script is one atomic step over the shared state, so no two replicas can ever
see an account free at once. Time is Redis's own (``TIME``), never a replica's
clock. Keys are built from the prefix passed as ``ARGV[1]`` (a single Redis or a
Sentinel-managed primary; Redis Cluster is not supported).

State, under the prefix P:

- ``P lease:<slot>``: the fence token of the lease on an account, with a TTL the
  holder renews; a slot is an account key (``email:...``) or ``direct:<sha256>``;
- ``P order`` (zset): pool accounts by when they were last released (busy ones far
  in the future), so the account idle longest is found first;
- ``P rest`` (zset): accounts resting until a time (ms; ``inf``: disabled);
  ``P health:<slot>`` (hash): state, reason, mute_until, for every replica's view;
- ``P started`` (hash): when each account last started a generation (``pool.min_gap``);
- ``P queue`` (zset): waiting requests in arrival order (``P dq:<slot>``: a direct
  token's own queue); ``P waiter:<id>`` (hash): a waiter's replica, the one slot it
  needs (``only``) or the slots it excludes, its deadline, its queue; ``P grant:<id>``: a lease handed to a waiter, until its replica takes it;
- ``P replica:<id>``: a replica's heartbeat (a dead replica's waiters are skipped);
- ``P owners`` (hash): token digest -> the pool account that token belongs to;
  ``P digests:<slot>`` (set): the other way round;
- ``P tokens`` (hash): account key -> token; ``P login:<key>``: the login lock;
- channels ``P grants:<replica>`` (a waiter of that replica got a lease),
  ``P health`` (an account's health changed), ``P tokens`` (a login finished).
"""

from __future__ import annotations

# Shared by the scripts that select and hand out accounts.
COMMON = r"""
local P = ARGV[1]
local BUSY = 1e13  -- busy accounts sort after every idle one in P order

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function split(s)
  local set = {}
  for item in string.gmatch(s or '', '%S+') do set[item] = true end
  return set
end

local function free(slot, now, gap)
  if redis.call('EXISTS', P .. 'lease:' .. slot) == 1 then return false end
  -- A caller's own token of this account, leased before the pool knew whose it was.
  for _, digest in ipairs(redis.call('SMEMBERS', P .. 'digests:' .. slot)) do
    if redis.call('EXISTS', P .. 'lease:direct:' .. digest) == 1 then return false end
  end
  local rest = redis.call('ZSCORE', P .. 'rest', slot)
  if rest and (rest == 'inf' or tonumber(rest) > now) then return false end
  if gap > 0 then
    local started = redis.call('HGET', P .. 'started', slot)
    if started and now - tonumber(started) < gap then return false end
  end
  return true
end

local function pick(only, exclude, now, gap)
  if only ~= '' then
    if free(only, now, gap) then return only end
    return nil
  end
  for _, slot in ipairs(redis.call('ZRANGE', P .. 'order', 0, -1)) do
    if not exclude[slot] and free(slot, now, gap) then return slot end
  end
  return nil
end

local function grant(slot, replica, now, ttl)
  local fence = redis.call('INCR', P .. 'fence') .. ':' .. replica
  redis.call('SET', P .. 'lease:' .. slot, fence, 'PX', ttl)
  redis.call('ZADD', P .. 'order', 'XX', now + BUSY, slot)
  redis.call('HSET', P .. 'started', slot, now)
  return fence
end

-- Hand free accounts to waiters, oldest first. A waiter of `caller` (the replica running
-- this step) gets its grant in the reply instead of a mailbox and a message: returns
-- {waiter, slot, fence, ...} for those.
local function dispatch(now, ttl, gap, caller, queue)
  local mine = {}
  for _, w in ipairs(redis.call('ZRANGE', queue, 0, -1)) do
    local rec = redis.call('HMGET', P .. 'waiter:' .. w, 'replica', 'only', 'exclude', 'deadline')
    if not rec[1] or tonumber(rec[4]) < now or redis.call('EXISTS', P .. 'replica:' .. rec[1]) == 0 then
      redis.call('ZREM', queue, w)  -- gone: its wait expired or its replica died
      redis.call('DEL', P .. 'waiter:' .. w)
    else
      local slot = pick(rec[2], split(rec[3]), now, gap)
      if slot then
        local fence = grant(slot, rec[1], now, ttl)
        redis.call('ZREM', queue, w)
        redis.call('DEL', P .. 'waiter:' .. w)
        if rec[1] == caller then
          mine[#mine + 1] = w
          mine[#mine + 1] = slot
          mine[#mine + 1] = fence
        else
          redis.call('SET', P .. 'grant:' .. w, slot .. ' ' .. fence, 'PX', ttl)
          redis.call('PUBLISH', P .. 'grants:' .. rec[1], w)
        end
      elseif rec[2] == '' and rec[3] == '' then
        break  -- nothing free for anyone: later waiters cannot do better
      end
    end
  end
  return mine
end

-- The pool's queue, or a direct token's own (its slot is no pool account: nobody else waits for it).
local function queue_of(slot)
  if string.sub(slot, 1, 7) == 'direct:' then return P .. 'dq:' .. slot end
  return P .. 'queue'
end

local function soonest_rest(now)
  local r = redis.call('ZRANGEBYSCORE', P .. 'rest', '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if r[2] and r[2] ~= 'inf' then return math.floor(tonumber(r[2]) - now) end
  return -1
end
"""

# ARGV: prefix, waiter id, replica, token digest ('' = the pool), exclude (space-separated
# slots), ttl ms, queue_max, timeout ms, min_gap ms.
# -> {'granted', slot, fence, pinned} | {'queued', depth, pinned, only, next_rest_ms, grants...} | {'full', depth}
# (grants: {waiter, slot, fence} triples for other waiters of this replica served meanwhile)
ACQUIRE = COMMON + r"""
local wid, replica, digest, exclude = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl, qmax, timeout, gap = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local now = now_ms()
local only, pinned = '', 0
if digest ~= '' then
  local owner = redis.call('HGET', P .. 'owners', digest)
  if owner and redis.call('ZSCORE', P .. 'order', owner) then
    only, pinned = owner, 1  -- a pool account's own token: that account's lease, nothing else
  else
    only = 'direct:' .. digest
  end
end
redis.call('SET', P .. 'replica:' .. replica, '1', 'PX', ttl)
local queue = queue_of(only)
local depth = redis.call('ZCARD', queue)
if depth == 0 then
  local slot = pick(only, split(exclude), now, gap)
  if slot then return {'granted', slot, grant(slot, replica, now, ttl), pinned} end
end
local served = {}
if depth >= qmax then
  served = dispatch(now, ttl, gap, replica, queue)
  depth = redis.call('ZCARD', queue)
  if depth >= qmax then
    local out = {'full', depth}
    for _, v in ipairs(served) do out[#out + 1] = v end
    return out
  end
end
redis.call('ZADD', queue, redis.call('INCR', P .. 'seq'), wid)
redis.call('HSET', P .. 'waiter:' .. wid, 'replica', replica, 'only', only, 'exclude', exclude,
           'deadline', now + timeout, 'queue', queue)
redis.call('PEXPIRE', P .. 'waiter:' .. wid, timeout + ttl)
for _, v in ipairs(dispatch(now, ttl, gap, replica, queue)) do served[#served + 1] = v end
local out = {'queued', redis.call('ZCARD', queue), pinned, only, soonest_rest(now)}
for _, v in ipairs(served) do out[#out + 1] = v end
return out
"""

# ARGV: prefix, slot, fence, ttl ms, min_gap ms, replica
# -> {1, grants...} released | {0} not this fence's (left alone); grants as in ACQUIRE
RELEASE = COMMON + r"""
local slot, fence, ttl, gap, replica = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local now = now_ms()
if redis.call('GET', P .. 'lease:' .. slot) ~= fence then return {0} end
redis.call('DEL', P .. 'lease:' .. slot)
redis.call('ZADD', P .. 'order', 'XX', now, slot)
local out = {1}
for _, v in ipairs(dispatch(now, ttl, gap, replica, queue_of(slot))) do out[#out + 1] = v end
if string.sub(slot, 1, 7) == 'direct:' and redis.call('HEXISTS', P .. 'owners', string.sub(slot, 8)) == 1 then
  -- That token turned out to be a pool account's: the pool's waiters may have it now.
  for _, v in ipairs(dispatch(now, ttl, gap, replica, P .. 'queue')) do out[#out + 1] = v end
end
return out
"""

# ARGV: prefix, ttl ms, min_gap ms, replica, slot ('' = the pool's queue; else that slot's queue)
# -> {ms until the next resting account recovers (-1: none), grants...}
DISPATCH = COMMON + r"""
local now = now_ms()
local served = dispatch(now, tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], queue_of(ARGV[5] or ''))
local out = {soonest_rest(now)}
for _, v in ipairs(served) do out[#out + 1] = v end
return out
"""

# ARGV: prefix, waiter id, ttl ms, min_gap ms -> 1 (a lease handed over meanwhile went back) | 0
CANCEL = COMMON + r"""
local wid, ttl, gap = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local queue = redis.call('HGET', P .. 'waiter:' .. wid, 'queue')
if queue then redis.call('ZREM', queue, wid) end
redis.call('ZREM', P .. 'queue', wid)
redis.call('DEL', P .. 'waiter:' .. wid)
local granted = redis.call('GET', P .. 'grant:' .. wid)
if not granted then return 0 end
redis.call('DEL', P .. 'grant:' .. wid)
local slot, fence = string.match(granted, '(%S+) (%S+)')
local now = now_ms()
if redis.call('GET', P .. 'lease:' .. slot) == fence then
  redis.call('DEL', P .. 'lease:' .. slot)
  redis.call('ZADD', P .. 'order', 'XX', now, slot)
  dispatch(now, ttl, gap, '', queue_of(slot))
end
return 1
"""

# ARGV: prefix, replica, ttl ms, then slot, fence pairs.
# -> per pair: 1 renewed | 2 taken back (it had expired and nobody else took it) | 0 lost
RENEW = r"""
local P, replica, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('SET', P .. 'replica:' .. replica, '1', 'PX', ttl)
local out = {}
for i = 4, #ARGV, 2 do
  local key = P .. 'lease:' .. ARGV[i]
  local held = redis.call('GET', key)
  if held == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ttl)
    out[#out + 1] = 1
  elseif not held then
    redis.call('SET', key, ARGV[i + 1], 'PX', ttl)
    redis.call('ZADD', P .. 'order', 'XX', 1e13, ARGV[i])
    out[#out + 1] = 2
  else
    out[#out + 1] = 0
  end
end
return out
"""

# ARGV: prefix, slot, state, rest seconds (-1: for good), reason, mute_until ('' if none),
# ttl ms, min_gap ms. Shares an account's health and tells every replica.
HEALTH = COMMON + r"""
local slot, state, rest, reason, mute = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local now = now_ms()
if state == 'ready' then
  redis.call('ZREM', P .. 'rest', slot)
elseif rest < 0 then
  redis.call('ZADD', P .. 'rest', 'inf', slot)
else
  redis.call('ZADD', P .. 'rest', now + math.floor(rest * 1000), slot)
end
redis.call('HSET', P .. 'health:' .. slot, 'state', state, 'reason', reason, 'mute_until', mute)
redis.call('PUBLISH', P .. 'health', slot)
if state == 'ready' then dispatch(now, tonumber(ARGV[7]), tonumber(ARGV[8]), '', P .. 'queue') end  -- by mailbox
return 1
"""

# ARGV: prefix, then slots -> per slot {state, reason, mute_until, ms left (-1: for good)}
READ_HEALTH = r"""
local P = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 2, #ARGV do
  local rest = redis.call('ZSCORE', P .. 'rest', ARGV[i])
  local h = redis.call('HMGET', P .. 'health:' .. ARGV[i], 'state', 'reason', 'mute_until')
  local left = 0
  if rest == 'inf' then left = -1 elseif rest and tonumber(rest) > now then left = tonumber(rest) - now end
  if left == 0 then h[1] = 'ready' end
  out[#out + 1] = {h[1] or 'ready', h[2] or '', h[3] or '', tostring(left)}
end
return out
"""

# ARGV: prefix, slots... (this replica's accounts join the pool, keeping their history)
REGISTER = r"""
local P = ARGV[1]
for i = 2, #ARGV do redis.call('ZADD', P .. 'order', 'NX', 0, ARGV[i]) end
return #ARGV - 1
"""

# ARGV: prefix, slots... (removed by a reload: no new leases; a running one ends normally)
UNREGISTER = r"""
local P = ARGV[1]
for i = 2, #ARGV do redis.call('ZREM', P .. 'order', ARGV[i]) end
return #ARGV - 1
"""

# ARGV: prefix, account key, token -> 1 dropped | 0 another token is stored now (kept)
DROP_TOKEN = r"""
local P = ARGV[1]
if redis.call('HGET', P .. 'tokens', ARGV[2]) ~= ARGV[3] then return 0 end
redis.call('HDEL', P .. 'tokens', ARGV[2])
return 1
"""

# ARGV: prefix, account key, token digest -> 1 (the token belongs to that pool account)
OWN = r"""
local P = ARGV[1]
redis.call('HSET', P .. 'owners', ARGV[3], ARGV[2])
redis.call('SADD', P .. 'digests:' .. ARGV[2], ARGV[3])
return 1
"""

# ARGV: prefix, account key, token, token digest
PUT_TOKEN = r"""
local P = ARGV[1]
redis.call('HSET', P .. 'tokens', ARGV[2], ARGV[3])
redis.call('HSET', P .. 'owners', ARGV[4], ARGV[2])
redis.call('SADD', P .. 'digests:' .. ARGV[2], ARGV[4])
redis.call('PUBLISH', P .. 'tokens', ARGV[2])
return 1
"""

# ARGV: prefix, account key, holder -> 1 unlocked | 0 not held by this holder
UNLOCK = r"""
local key = ARGV[1] .. 'login:' .. ARGV[2]
if redis.call('GET', key) ~= ARGV[3] then return 0 end
redis.call('DEL', key)
redis.call('PUBLISH', ARGV[1] .. 'tokens', ARGV[2])
return 1
"""

SCRIPTS = {
    "acquire": ACQUIRE,
    "release": RELEASE,
    "dispatch": DISPATCH,
    "cancel": CANCEL,
    "renew": RENEW,
    "health": HEALTH,
    "read_health": READ_HEALTH,
    "register": REGISTER,
    "unregister": UNREGISTER,
    "drop_token": DROP_TOKEN,
    "put_token": PUT_TOKEN,
    "own": OWN,
    "unlock": UNLOCK,
}
