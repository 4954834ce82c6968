-- heartbeat.lua: keep a lease alive (reset the stream entry's idle time) if it is still ours.
-- KEYS[1] job hash      <p>:{pool}:job:<uid>:<pid>
-- KEYS[2] lease stream  <p>:{pool}:leases
-- ARGV[1] lease id  ARGV[2] consumer group  ARGV[3] consumer
-- Returns 0 when the lease is lost, 1 when kept, 2 when kept and an interrupt was requested.
local cur = redis.call('HMGET', KEYS[1], 'lease', 'state', 'interrupt')
if cur[1] ~= ARGV[1] or cur[2] ~= 'running' then return 0 end
redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[1], 'JUSTID')
if cur[3] == '1' then return 2 end
return 1
