-- cancel.lua: remove a user's pending jobs (by id, or all of them); running jobs are untouched
-- (after sched.lua).
-- KEYS[1] pending zset  <p>:{pool}:pending:<uid>
-- KEYS[2] ready zset    <p>:{pool}:ready
-- KEYS[3] running set   <p>:{pool}:running:<uid>
-- ARGV[1] pool base  ARGV[2] uid  ARGV[3] now (ms)  ARGV[4] user's event channel
-- ARGV[5] lifetime (s) of a cancelled job's record  ARGV[6] '*' for all, else ARGV[6..] prompt ids
-- Returns the prompt ids that were removed.
local ids = {}
if ARGV[6] == '*' then
  ids = redis.call('ZRANGE', KEYS[1], 0, -1)
else
  for i = 6, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local removed = {}
for _, pid in ipairs(ids) do
  if redis.call('ZSCORE', KEYS[1], pid) then
    local job = ARGV[1] .. ':job:' .. ARGV[2] .. ':' .. pid
    sched_dequeue(ARGV[1], ARGV[2], pid, redis.call('HGET', job, 'cls') or '0')
    redis.call('HSET', job, 'state', 'cancelled', 'ended', ARGV[3])
    redis.call('HDEL', job, 'secret')
    redis.call('EXPIRE', job, ARGV[5])
    removed[#removed + 1] = pid
  end
end
if #removed > 0 then sched_status(ARGV[1], ARGV[2], ARGV[4]) end
return removed
