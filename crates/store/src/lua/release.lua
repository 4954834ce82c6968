-- release.lua: give a leased job back to its owner's queue (worker draining, backend lost before
-- the job could run). The job keeps its place: same priority as when it was submitted
-- (after sched.lua).
-- KEYS[1] job hash      <p>:{pool}:job:<uid>:<pid>
-- KEYS[2] lease stream  <p>:{pool}:leases
-- KEYS[3] running set   <p>:{pool}:running:<uid>
-- KEYS[4] runners zset  <p>:{pool}:runners
-- KEYS[5] pending zset  <p>:{pool}:pending:<uid>
-- KEYS[6] ready zset    <p>:{pool}:ready
-- ARGV[1] lease id  ARGV[2] pid  ARGV[3] uid  ARGV[4] consumer group  ARGV[5] pool wake channel
-- ARGV[6] '1' when the attempt counts against the job's attempt limit, '0' when it does not
-- ARGV[7] pool base
-- Returns 1 when released, 0 when the lease was lost.
local cur = redis.call('HMGET', KEYS[1], 'lease', 'state', 'number', 'cls')
if cur[1] ~= ARGV[1] or cur[2] ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'pending', 'lease', '', 'worker', '', 'backend', '', 'node', '')
redis.call('HDEL', KEYS[1], 'interrupt')
if ARGV[6] == '0' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[3] .. ':' .. ARGV[2])
sched_enqueue(ARGV[7], ARGV[3], ARGV[2], tonumber(cur[3]) or 0, cur[4] or '0')
redis.call('XACK', KEYS[2], ARGV[4], ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[5], '1')
return 1
