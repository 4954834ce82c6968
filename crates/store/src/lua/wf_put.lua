-- wf_put.lua: write one workflow file of one space (a user's, or the global one).
-- KEYS[1] data hash  <p>:{wf:<space>}:data   path -> the file's bytes, exactly as saved
-- KEYS[2] meta hash  <p>:{wf:<space>}:meta   path -> '<size> <created_us> <modified_us>'
-- KEYS[3] index zset <p>:{wf:<space>}:idx    every path, score 0 (lexicographic ranges = dirs)
-- ARGV[1] path  ARGV[2] bytes  ARGV[3] overwrite ('1' or '0')  ARGV[4] max files of the space
-- Returns {'ok', size, created_us, modified_us}, or {'exists'} (overwrite refused),
-- {'full'} (count limit), {'isdir'} (files live under this path), {'parent'} (a parent is a file).
-- Times come from the Redis clock, so every gateway stamps alike.
local path = ARGV[1]
local exists = redis.call('HEXISTS', KEYS[1], path) == 1
if exists and ARGV[3] ~= '1' then return {'exists'} end
if not exists then
  local under = redis.call('ZRANGEBYLEX', KEYS[3], '[' .. path .. '/', '(' .. path .. '0', 'LIMIT', 0, 1)
  if #under > 0 then return {'isdir'} end
  local i = 0
  while true do
    i = string.find(path, '/', i + 1, true)
    if not i then break end
    if redis.call('HEXISTS', KEYS[1], string.sub(path, 1, i - 1)) == 1 then return {'parent'} end
  end
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return {'full'} end
end
local t = redis.call('TIME')
local now = t[1] .. string.format('%06d', tonumber(t[2]))
local created = now
if exists then
  local old = redis.call('HGET', KEYS[2], path)
  if old then created = string.match(old, '^%d+ (%d+)') or now end
end
local size = string.format('%d', #ARGV[2])
redis.call('HSET', KEYS[1], path, ARGV[2])
redis.call('HSET', KEYS[2], path, size .. ' ' .. created .. ' ' .. now)
redis.call('ZADD', KEYS[3], 0, path)
return {'ok', size, created, now}
