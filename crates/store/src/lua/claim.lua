-- claim.lua: hand the next job to a free backend and open its lease.
-- KEYS[1] ready zset    <p>:{pool}:ready
-- KEYS[2] lease stream  <p>:{pool}:leases
-- KEYS[3] runners zset  <p>:{pool}:runners
-- ARGV[1] pool base <p>:{pool} (per-user keys of the same slot are built from it)
-- ARGV[2] consumer name (worker/backend)  ARGV[3] now (ms)  ARGV[4] event channel prefix <p>:ev:
-- ARGV[5] worker id  ARGV[6] backend id  ARGV[7] consumer group
-- Returns false when nothing is pending, else
-- {lease id, uid, pid, attempt, username, client id, queue item, secret, request id}.
local base = ARGV[1]
for _ = 1, 16 do
  local top = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #top == 0 then return false end
  local uid = top[1]
  local pending = base .. ':pending:' .. uid
  local head = redis.call('ZRANGE', pending, 0, 0)
  if #head == 0 then
    redis.call('ZREM', KEYS[1], uid)
  else
    local pid = head[1]
    redis.call('ZREM', pending, pid)
    local nxt = redis.call('ZRANGE', pending, 0, 0, 'WITHSCORES')
    if #nxt == 0 then redis.call('ZREM', KEYS[1], uid) else redis.call('ZADD', KEYS[1], nxt[2], uid) end
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
      redis.call('HSET', job, 'state', 'running', 'lease', id, 'worker', ARGV[5], 'backend', ARGV[6],
        'started', ARGV[3], 'node', '')
      local running = base .. ':running:' .. uid
      redis.call('SADD', running, pid)
      redis.call('ZADD', KEYS[3], ARGV[3], uid .. ':' .. pid)
      local remaining = redis.call('ZCARD', pending) + redis.call('SCARD', running)
      redis.call('PUBLISH', ARGV[4] .. uid, 'T*\0\0{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": ' .. remaining .. '}}}}')
      local f = redis.call('HMGET', job, 'user', 'cid', 'item', 'secret', 'reqid')
      return {id, uid, pid, attempt, f[1] or '', f[2] or '', f[3] or '', f[4] or '', f[5] or ''}
    end
  end
end
return false
