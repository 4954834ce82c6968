-- submit.lua: write a new job durably and queue it, in one round trip (after sched.lua).
-- KEYS[1] job hash          <p>:{pool}:job:<uid>:<pid>
-- KEYS[2] pending zset      <p>:{pool}:pending:<uid>
-- KEYS[3] ready zset        <p>:{pool}:ready
-- KEYS[4] number counter    <p>:{pool}:seq
-- KEYS[5] running set       <p>:{pool}:running:<uid>
-- KEYS[6] idempotency hash  <p>:{pool}:idem:<uid>:<key> (declared even when no key was sent)
-- KEYS[7] owners set        <p>:{pool}:owners:<pid> (who used this prompt id: admins' /view)
-- KEYS[8] sched hash        <p>:{pool}:sched
-- KEYS[9] classes hash      <p>:{pool}:classes
-- KEYS[10] class queue      <p>:{pool}:q:<class>:<uid>
-- KEYS[11] user's classes   <p>:{pool}:ucls:<uid>
-- ARGV[1] uid  ARGV[2] username  ARGV[3] prompt id  ARGV[4] front ('1'/'0')
-- ARGV[5] client-chosen number ('' for none)  ARGV[6] queue item tail: ,"<pid>",<prompt>,<extra>,<outputs>]
-- ARGV[7] client id ('' for none)  ARGV[8] sensitive extra_data JSON ('' for none)
-- ARGV[9] body hash  ARGV[10] '1' when an Idempotency-Key was sent  ARGV[11] now (ms)
-- ARGV[12] user's event channel  ARGV[13] pool wake channel  ARGV[14] request id  ARGV[15] pool
-- ARGV[16] idempotency record lifetime (s)  ARGV[17] pool base <p>:{pool}
-- ARGV[18] max queued (0: no limit)  ARGV[19] '<max running> <weight>' (max running 0: no limit)
-- ARGV[20] capability class id  ARGV[21] the class's requirement JSON
-- Returns {'created'|'existing'|'conflict', prompt id, number} or {'full', prompt id, limit}.
if ARGV[10] == '1' then
  local prev = redis.call('HMGET', KEYS[6], 'pid', 'hash', 'number')
  if prev[1] then
    if prev[2] ~= ARGV[9] then return {'conflict', prev[1], prev[3]} end
    return {'existing', prev[1], prev[3]}
  end
end
local existing = redis.call('HGET', KEYS[1], 'number')
if existing then return {'existing', ARGV[3], existing} end
local max_queued = tonumber(ARGV[18]) or 0
if max_queued > 0 and redis.call('ZCARD', KEYS[2]) >= max_queued then
  return {'full', ARGV[3], ARGV[18]}
end

local n = redis.call('INCR', KEYS[4])
local number, score
if ARGV[5] ~= '' then
  number = ARGV[5]
  score = tonumber(ARGV[5])
elseif ARGV[4] == '1' then
  number = string.format('%d', -n)
  score = -n
else
  number = string.format('%d', n)
  score = n
end

redis.call('HSET', KEYS[1], 'uid', ARGV[1], 'user', ARGV[2], 'pid', ARGV[3], 'pool', ARGV[15],
  'number', number, 'state', 'pending', 'cid', ARGV[7], 'created', ARGV[11], 'attempts', 0,
  'item', '[' .. number .. ARGV[6], 'reqid', ARGV[14], 'hash', ARGV[9], 'cls', ARGV[20])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'secret', ARGV[8]) end
redis.call('SADD', KEYS[7], ARGV[1])
-- Writes only what changed (every write is also an AOF/replication entry).
if redis.call('HGET', KEYS[8], 'l:' .. ARGV[1]) ~= ARGV[19] then
  redis.call('HSET', KEYS[8], 'l:' .. ARGV[1], ARGV[19])
end
redis.call('ZADD', KEYS[2], score, ARGV[3])
redis.call('ZADD', KEYS[10], score, ARGV[3])
if redis.call('SADD', KEYS[11], ARGV[20]) == 1 then
  redis.call('HSETNX', KEYS[9], ARGV[20], ARGV[21])
end
sched_join(ARGV[17], ARGV[1])
if ARGV[10] == '1' then
  redis.call('HSET', KEYS[6], 'pid', ARGV[3], 'hash', ARGV[9], 'number', number)
  redis.call('EXPIRE', KEYS[6], ARGV[16])
end

local running = redis.call('SCARD', KEYS[5])
local remaining = redis.call('ZCARD', KEYS[2]) + running
redis.call('PUBLISH', ARGV[12], 'T*\0\0{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": ' .. remaining .. '}}}}')
-- Idle workers are nudged only when this job could start now (its owner is under its limit).
local max_running = tonumber(string.match(ARGV[19], '^(%d+)')) or 0
if max_running == 0 or running < max_running then redis.call('PUBLISH', ARGV[13], '1') end
return {'created', ARGV[3], number}
