-- retry.lua: requeue a dead-lettered job (operator action): it loses its error history entry
-- and runs again with a fresh attempt count.
-- KEYS[1] dead-letter stream <p>:{pool}:dead
-- KEYS[2] ready zset         <p>:{pool}:ready
-- ARGV[1] pool base  ARGV[2] dead-letter entry id  ARGV[3] wake channel  ARGV[4] event channel prefix
-- Runs after sched.lua.
-- Returns the requeued job's '<uid>:<pid>', or false when the entry is unknown or the job is gone.
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #entry == 0 then return false end
local fields, ref = entry[1][2], nil
for i = 1, #fields, 2 do if fields[i] == 'job' then ref = fields[i + 1] end end
if not ref then return false end
local sep = string.find(ref, ':', 1, true)
local uid, pid = string.sub(ref, 1, sep - 1), string.sub(ref, sep + 1)
local base = ARGV[1]
local job = base .. ':job:' .. uid .. ':' .. pid
local cur = redis.call('HMGET', job, 'state', 'number', 'cls')
if cur[1] ~= 'error' then return false end
redis.call('HSET', job, 'state', 'pending', 'attempts', 0, 'history', '', 'ended', '')
redis.call('ZREM', base .. ':hist:' .. uid, pid)
local pending = base .. ':pending:' .. uid
sched_enqueue(base, uid, pid, tonumber(cur[2]) or 0, cur[3] or '0')
redis.call('XDEL', KEYS[1], ARGV[2])
local remaining = redis.call('ZCARD', pending) + redis.call('SCARD', base .. ':running:' .. uid)
redis.call('PUBLISH', ARGV[4] .. uid, 'T*\0\0{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": ' .. remaining .. '}}}}')
redis.call('PUBLISH', ARGV[3], '1')
return ref
