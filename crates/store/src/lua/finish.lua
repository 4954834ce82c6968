-- finish.lua: end a job atomically, only if the caller still holds its lease.
-- KEYS[1] job hash      <p>:{pool}:job:<uid>:<pid>
-- KEYS[2] lease stream  <p>:{pool}:leases
-- KEYS[3] running set   <p>:{pool}:running:<uid>
-- KEYS[4] runners zset  <p>:{pool}:runners
-- KEYS[5] history zset  <p>:{pool}:hist:<uid>
-- KEYS[6] history seq   <p>:{pool}:hseq
-- KEYS[7] pending zset  <p>:{pool}:pending:<uid>
-- KEYS[8] dead letters  <p>:{pool}:dead
-- KEYS[9] all history   <p>:{pool}:hist
-- ARGV[1] lease id  ARGV[2] state (success|error|interrupted)  ARGV[3] history entry JSON
-- ARGV[4] terminal message JSON ('' for none)  ARGV[5] now (ms)  ARGV[6] user's event channel
-- ARGV[7] uid  ARGV[8] pid  ARGV[9] consumer group  ARGV[10] history cap  ARGV[11] pool base
-- ARGV[12] dead-letter reason ('' when the job is not a dead letter)
-- Returns 1 when finished, 0 when the lease was lost (someone else owns the job now).
local cur = redis.call('HMGET', KEYS[1], 'lease', 'state', 'cid')
if cur[1] ~= ARGV[1] or cur[2] ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'ended', ARGV[5], 'history', ARGV[3], 'lease', '', 'node', '')
redis.call('HDEL', KEYS[1], 'secret')
redis.call('SREM', KEYS[3], ARGV[8])
redis.call('ZREM', KEYS[4], ARGV[7] .. ':' .. ARGV[8])
local seq = redis.call('INCR', KEYS[6])
redis.call('ZADD', KEYS[5], seq, ARGV[8])
redis.call('ZADD', KEYS[9], seq, ARGV[7] .. ':' .. ARGV[8])
if redis.call('ZCARD', KEYS[9]) > tonumber(ARGV[10]) then
  redis.call('ZREMRANGEBYRANK', KEYS[9], 0, redis.call('ZCARD', KEYS[9]) - tonumber(ARGV[10]) - 1)
end
-- Retention: drop the oldest entries (and their job records) past the cap.
local excess = redis.call('ZCARD', KEYS[5]) - tonumber(ARGV[10])
if excess > 0 then
  local old = redis.call('ZRANGE', KEYS[5], 0, excess - 1)
  for _, p in ipairs(old) do redis.call('DEL', ARGV[11] .. ':job:' .. ARGV[7] .. ':' .. p) end
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, excess - 1)
end
redis.call('XACK', KEYS[2], ARGV[9], ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
if ARGV[12] ~= '' then
  local attempts = redis.call('HGET', KEYS[1], 'attempts') or '0'
  redis.call('XADD', KEYS[8], '*', 'job', ARGV[7] .. ':' .. ARGV[8], 'attempts', attempts, 'reason', ARGV[12], 'at', ARGV[5])
end

local cid = cur[3] or ''
local to_client = 'TC' .. string.char(math.floor(#cid / 256), #cid % 256) .. cid
-- ComfyUI's order: terminal message, status, executing {node: null}.
if ARGV[4] ~= '' then
  if cid ~= '' then
    redis.call('PUBLISH', ARGV[6], to_client .. ARGV[4])
  elseif ARGV[2] == 'interrupted' then
    redis.call('PUBLISH', ARGV[6], 'T*\0\0' .. ARGV[4])
  end
end
local remaining = redis.call('ZCARD', KEYS[7]) + redis.call('SCARD', KEYS[3])
redis.call('PUBLISH', ARGV[6], 'T*\0\0{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": ' .. remaining .. '}}}}')
if cid ~= '' then
  redis.call('PUBLISH', ARGV[6], to_client .. '{"type": "executing", "data": {"node": null, "prompt_id": "' .. ARGV[8] .. '"}}')
end
return 1
