-- wf_move.lua: rename one workflow file inside one space; size and times move with it.
-- KEYS[1] data hash  <p>:{wf:<space>}:data
-- KEYS[2] meta hash  <p>:{wf:<space>}:meta
-- KEYS[3] index zset <p>:{wf:<space>}:idx
-- ARGV[1] source path  ARGV[2] destination path  ARGV[3] overwrite ('1' or '0')
-- Returns {'ok', meta} (meta = '<size> <created_us> <modified_us>'), or {'missing'} (no source),
-- {'exists'} (destination exists, overwrite refused), {'isdir'}, {'parent'} (as wf_put.lua).
local src, dst = ARGV[1], ARGV[2]
local bytes = redis.call('HGET', KEYS[1], src)
if not bytes then return {'missing'} end
local meta = redis.call('HGET', KEYS[2], src) or (string.format('%d', #bytes) .. ' 0 0')
if src == dst then return {'ok', meta} end
local exists = redis.call('HEXISTS', KEYS[1], dst) == 1
if exists and ARGV[3] ~= '1' then return {'exists'} end
if not exists then
  local under = redis.call('ZRANGEBYLEX', KEYS[3], '[' .. dst .. '/', '(' .. dst .. '0', 'LIMIT', 0, 1)
  if #under > 0 then return {'isdir'} end
  local i = 0
  while true do
    i = string.find(dst, '/', i + 1, true)
    if not i then break end
    if redis.call('HEXISTS', KEYS[1], string.sub(dst, 1, i - 1)) == 1 then return {'parent'} end
  end
end
redis.call('HDEL', KEYS[1], src)
redis.call('HDEL', KEYS[2], src)
redis.call('ZREM', KEYS[3], src)
redis.call('HSET', KEYS[1], dst, bytes)
redis.call('HSET', KEYS[2], dst, meta)
redis.call('ZADD', KEYS[3], 0, dst)
return {'ok', meta}
