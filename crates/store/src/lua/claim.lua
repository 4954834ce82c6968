-- claim.lua: hand the next job this backend can run to it and open its lease (after sched.lua).
-- Users are served in order of virtual time (weighted fair share; ties go to the user with
-- fewer running jobs); users at their running limit are skipped; within the chosen user, the
-- best-priority head among the classes this backend can run, preferring a class marked warm
-- (same checkpoint as the backend's last job) unless a front job is waiting.
-- KEYS[1] ready zset    <p>:{pool}:ready
-- KEYS[2] lease stream  <p>:{pool}:leases
-- KEYS[3] runners zset  <p>:{pool}:runners
-- KEYS[4] sched hash    <p>:{pool}:sched
-- KEYS[5] classes hash  <p>:{pool}:classes
-- ARGV[1] pool base <p>:{pool} (per-user keys of the same slot are built from it)
-- ARGV[2] consumer name (worker/backend)  ARGV[3] now (ms)  ARGV[4] event channel prefix <p>:ev:
-- ARGV[5] worker id  ARGV[6] backend id  ARGV[7] consumer group
-- ARGV[8] how many ready users to inspect at most
-- ARGV[9..] the classes this backend can run, each 'w<class>' (warm) or 'c<class>'; a single
-- '*' means every class.
-- Returns {number of known classes} when nothing can be claimed, else
-- {lease id, uid, pid, attempt, username, client id, queue item, secret, request id, class,
--  number of known classes}.
local base = ARGV[1]
local any = ARGV[9] == '*'
local offer = {}
if not any then
  for i = 9, #ARGV do offer[string.sub(ARGV[i], 2)] = string.sub(ARGV[i], 1, 1) == 'w' end
end
local bound = tonumber(ARGV[8]) or 64
for _ = 1, 8 do
  local users = redis.call('ZRANGE', KEYS[1], 0, bound - 1, 'WITHSCORES')
  local best = nil
  for i = 1, #users, 2 do
    local uid, score = users[i], tonumber(users[i + 1])
    if best and score > best.score + 1e-9 then break end
    local maxr, w = sched_limits(base, uid)
    local running = redis.call('SCARD', base .. ':running:' .. uid)
    if (maxr == 0 or running < maxr) and (best == nil or running < best.running) then
      local pick, warm = nil, nil
      local ucls = base .. ':ucls:' .. uid
      local classes = redis.call('SMEMBERS', ucls)
      if #classes == 0 then classes = sched_adopt(base, uid) end
      for _, c in ipairs(classes) do
        local isw = offer[c]
        -- Class '0': jobs queued before capability routing existed (validated against the
        -- pool's union catalogue then); any backend takes them.
        if any or isw ~= nil or c == '0' then
          local h = redis.call('ZRANGE', base .. ':q:' .. c .. ':' .. uid, 0, 0, 'WITHSCORES')
          if #h == 0 then
            redis.call('SREM', ucls, c)
          else
            local s = tonumber(h[2])
            if pick == nil or s < pick[3] then pick = {h[1], c, s} end
            if isw and (warm == nil or s < warm[3]) then warm = {h[1], c, s} end
          end
        end
      end
      if pick then
        if warm and pick[3] >= 0 then pick = warm end
        best = {uid = uid, score = score, running = running, w = w, pid = pick[1], cls = pick[2]}
      end
    end
  end
  if best == nil then return {redis.call('HLEN', KEYS[5])} end

  local uid, pid = best.uid, best.pid
  sched_dequeue(base, uid, pid, best.cls)
  local vt = best.score + 1 / best.w
  redis.call('HSET', KEYS[4], 'v:' .. uid, vt)
  if redis.call('ZSCORE', KEYS[1], uid) then redis.call('ZADD', KEYS[1], vt, uid) end
  local now = tonumber(redis.call('HGET', KEYS[4], 'now')) or 0
  if best.score > now then redis.call('HSET', KEYS[4], 'now', best.score) end

  local job = base .. ':job:' .. uid .. ':' .. pid
  if redis.call('HGET', job, 'state') == 'pending' then
    local attempt = redis.call('HINCRBY', job, 'attempts', 1)
    local id = redis.call('XADD', KEYS[2], '*', 'job', uid .. ':' .. pid, 'attempt', attempt)
    -- Deliver it to this consumer so the group's pending list holds the lease.
    local ok = redis.pcall('XREADGROUP', 'GROUP', ARGV[7], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[2], '>')
    if type(ok) == 'table' and ok.err then
      redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[7], '0', 'MKSTREAM')
      redis.call('XREADGROUP', 'GROUP', ARGV[7], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[2], '>')
    end
    -- 'claimed' keeps the (monotonic) lease id of the latest start: the order jobs started in.
    redis.call('HSET', job, 'state', 'running', 'lease', id, 'claimed', id, 'worker', ARGV[5],
      'backend', ARGV[6], 'started', ARGV[3], 'node', '')
    local running = base .. ':running:' .. uid
    redis.call('SADD', running, pid)
    redis.call('ZADD', KEYS[3], ARGV[3], uid .. ':' .. pid)
    sched_status(base, uid, ARGV[4] .. uid)
    local f = redis.call('HMGET', job, 'user', 'cid', 'item', 'secret', 'reqid')
    return {id, uid, pid, attempt, f[1] or '', f[2] or '', f[3] or '', f[4] or '', f[5] or '',
      best.cls, redis.call('HLEN', KEYS[5])}
  end
end
return {redis.call('HLEN', KEYS[5])}
