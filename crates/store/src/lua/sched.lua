-- sched.lua: helpers shared by the queue scripts (prepended to submit, claim, cancel, release,
-- reclaim and retry; it declares no keys of its own: every key is built from the pool base, so
-- it is in the calling script's slot).
-- Shape (see keys.rs): pending:<uid> zset (every pending job of the user, by priority),
-- q:<class>:<uid> zset (the user's pending jobs of one capability class, by priority),
-- ucls:<uid> set (classes in which the user has pending jobs), ready zset (users with pending
-- work, scored by virtual time), sched hash (v:<uid> virtual time, l:<uid> '<max_running>
-- <weight>', now = start tag of the latest claim).

-- The user's running limit (0: none) and weight (> 0).
local function sched_limits(base, uid)
  local l = redis.call('HGET', base .. ':sched', 'l:' .. uid)
  local maxr, w = 0, 1
  if l then
    local a, b = string.match(l, '^(%d+) (%S+)$')
    maxr = tonumber(a) or 0
    w = tonumber(b) or 1
    if w <= 0 then w = 1 end
  end
  return maxr, w
end

-- Puts a user with pending work into the ready set (no-op when already there). Its virtual
-- time starts at max(its own, the least virtual time of the users already waiting net of the
-- jobs they have running): an idle user banks no credit, a newcomer is not put behind the
-- jobs others already have in flight.
local function sched_join(base, uid)
  local ready = base .. ':ready'
  if redis.call('ZSCORE', ready, uid) then return end
  local sched = base .. ':sched'
  local own = tonumber(redis.call('HGET', sched, 'v:' .. uid)) or 0
  local floor = nil
  local top = redis.call('ZRANGE', ready, 0, 15, 'WITHSCORES')
  for i = 1, #top, 2 do
    local _, w = sched_limits(base, top[i])
    local v = tonumber(top[i + 1]) - redis.call('SCARD', base .. ':running:' .. top[i]) / w
    if floor == nil or v < floor then floor = v end
  end
  if floor == nil then floor = tonumber(redis.call('HGET', sched, 'now')) or 0 end
  local vt = own
  if floor > vt then vt = floor end
  redis.call('HSET', sched, 'v:' .. uid, vt)
  redis.call('ZADD', ready, vt, uid)
end

-- Indexes a pending job: the user's pending zset, its class queue, and the ready set.
local function sched_enqueue(base, uid, pid, score, cls)
  redis.call('ZADD', base .. ':pending:' .. uid, score, pid)
  redis.call('ZADD', base .. ':q:' .. cls .. ':' .. uid, score, pid)
  redis.call('SADD', base .. ':ucls:' .. uid, cls)
  sched_join(base, uid)
end

-- Removes a pending job from every index (the caller checked it was pending).
local function sched_dequeue(base, uid, pid, cls)
  local pending = base .. ':pending:' .. uid
  redis.call('ZREM', pending, pid)
  local q = base .. ':q:' .. cls .. ':' .. uid
  redis.call('ZREM', q, pid)
  if redis.call('ZCARD', q) == 0 then redis.call('SREM', base .. ':ucls:' .. uid, cls) end
  if redis.call('ZCARD', pending) == 0 then redis.call('ZREM', base .. ':ready', uid) end
end

-- Publishes the user's own queue_remaining (pending + running).
local function sched_status(base, uid, channel)
  local remaining = redis.call('ZCARD', base .. ':pending:' .. uid) + redis.call('SCARD', base .. ':running:' .. uid)
  redis.call('PUBLISH', channel, 'T*\0\0{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": ' .. remaining .. '}}}}')
end

-- A ready user without class queues has jobs queued before capability routing existed: index
-- up to 1000 of them (class '0' unless the job names one) and give the user the current virtual
-- time instead of its old priority-number score. Returns the user's classes.
local function sched_adopt(base, uid)
  local ucls = base .. ':ucls:' .. uid
  local pending = base .. ':pending:' .. uid
  local ids = redis.call('ZRANGE', pending, 0, 999, 'WITHSCORES')
  for i = 1, #ids, 2 do
    local cls = redis.call('HGET', base .. ':job:' .. uid .. ':' .. ids[i], 'cls') or '0'
    redis.call('ZADD', base .. ':q:' .. cls .. ':' .. uid, ids[i + 1], ids[i])
    redis.call('SADD', ucls, cls)
  end
  if #ids > 0 and not redis.call('HGET', base .. ':sched', 'v:' .. uid) then
    redis.call('ZADD', base .. ':ready', tonumber(redis.call('HGET', base .. ':sched', 'now')) or 0, uid)
  end
  if #ids == 0 then redis.call('ZREM', base .. ':ready', uid) end
  return redis.call('SMEMBERS', ucls)
end

