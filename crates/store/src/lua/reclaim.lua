-- reclaim.lua: take over leases whose holder stopped heartbeating (crashed or cut-off worker).
-- Each expired lease either goes back to its owner's queue (to run again on another backend) or,
-- past the attempt limit, ends the job with an execution_error and copies it to the dead letters.
-- KEYS[1] lease stream      <p>:{pool}:leases
-- KEYS[2] ready zset        <p>:{pool}:ready
-- KEYS[3] runners zset      <p>:{pool}:runners
-- KEYS[4] dead-letter stream <p>:{pool}:dead
-- KEYS[5] history seq       <p>:{pool}:hseq
-- KEYS[6] all history       <p>:{pool}:hist
-- ARGV[1] pool base  ARGV[2] consumer group  ARGV[3] reclaiming consumer  ARGV[4] min idle (ms)
-- ARGV[5] max attempts  ARGV[6] now (ms)  ARGV[7] event channel prefix  ARGV[8] wake channel
-- ARGV[9] history cap  ARGV[10] how many leases to look at
-- Runs after sched.lua.
-- Returns {requeued, dead} counts.
local base = ARGV[1]
local ok, res = pcall(redis.call, 'XAUTOCLAIM', KEYS[1], ARGV[2], ARGV[3], ARGV[4], '0-0', 'COUNT', ARGV[10])
if not ok then return {0, 0} end
local requeued, dead = 0, 0
local status = function(uid)
  local remaining = redis.call('ZCARD', base .. ':pending:' .. uid) + redis.call('SCARD', base .. ':running:' .. uid)
  redis.call('PUBLISH', ARGV[7] .. uid, 'T*\0\0{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": ' .. remaining .. '}}}}')
end
for _, entry in ipairs(res[2]) do
  local id, fields = entry[1], entry[2]
  local ref
  for i = 1, #fields, 2 do if fields[i] == 'job' then ref = fields[i + 1] end end
  redis.call('XACK', KEYS[1], ARGV[2], id)
  redis.call('XDEL', KEYS[1], id)
  if ref then
    local sep = string.find(ref, ':', 1, true)
    local uid, pid = string.sub(ref, 1, sep - 1), string.sub(ref, sep + 1)
    local job = base .. ':job:' .. uid .. ':' .. pid
    local cur = redis.call('HMGET', job, 'lease', 'state', 'attempts', 'number', 'cid', 'item', 'started', 'cls')
    -- Only the lease that still owns a running job matters; anything else is a leftover.
    if cur[1] == id and cur[2] == 'running' then
      local running = base .. ':running:' .. uid
      redis.call('SREM', running, pid)
      redis.call('ZREM', KEYS[3], uid .. ':' .. pid)
      local attempts = tonumber(cur[3]) or 0
      if attempts < tonumber(ARGV[5]) then
        redis.call('HSET', job, 'state', 'pending', 'lease', '', 'worker', '', 'backend', '', 'node', '')
        sched_enqueue(base, uid, pid, tonumber(cur[4]) or 0, cur[8] or '0')
        requeued = requeued + 1
      else
        local reason = 'The job was lost ' .. attempts .. ' times (its worker or backend stopped answering); it will not be retried.'
        local err = cjson.encode({prompt_id = pid, node_id = cjson.null, node_type = cjson.null,
          executed = {}, exception_message = reason, exception_type = 'comfy_broker.AttemptsExhausted',
          traceback = {}, current_inputs = {}, current_outputs = {}, timestamp = tonumber(ARGV[6])})
        local started = cjson.encode({prompt_id = pid, timestamp = tonumber(cur[7]) or tonumber(ARGV[6])})
        local cached = cjson.encode({nodes = {}, prompt_id = pid, timestamp = tonumber(cur[7]) or tonumber(ARGV[6])})
        -- cjson writes an empty table as {}; the lists must be [].
        err = string.gsub(err, '"executed":{}', '"executed":[]')
        err = string.gsub(err, '"traceback":{}', '"traceback":[]')
        err = string.gsub(err, '"current_outputs":{}', '"current_outputs":[]')
        cached = string.gsub(cached, '"nodes":{}', '"nodes":[]')
        local history = '{"prompt": ' .. (cur[6] or 'null') .. ', "outputs": {}, "status": {"status_str": "error", "completed": false, "messages": [["execution_start", ' .. started .. '], ["execution_cached", ' .. cached .. '], ["execution_error", ' .. err .. ']]}, "meta": {}}'
        redis.call('HSET', job, 'state', 'error', 'ended', ARGV[6], 'history', history, 'lease', '', 'node', '')
        redis.call('HDEL', job, 'secret')
        local hist = base .. ':hist:' .. uid
        local seq = redis.call('INCR', KEYS[5])
        redis.call('ZADD', hist, seq, pid)
        redis.call('ZADD', KEYS[6], seq, ref)
        local excess = redis.call('ZCARD', hist) - tonumber(ARGV[9])
        if excess > 0 then
          local old = redis.call('ZRANGE', hist, 0, excess - 1)
          for _, p in ipairs(old) do redis.call('DEL', base .. ':job:' .. uid .. ':' .. p) end
          redis.call('ZREMRANGEBYRANK', hist, 0, excess - 1)
        end
        redis.call('XADD', KEYS[4], '*', 'job', ref, 'attempts', attempts, 'reason', reason, 'at', ARGV[6])
        local cid = cur[5] or ''
        local ch = ARGV[7] .. uid
        local to_client = 'TC' .. string.char(math.floor(#cid / 256), #cid % 256) .. cid
        if cid ~= '' then redis.call('PUBLISH', ch, to_client .. '{"type": "execution_error", "data": ' .. err .. '}') end
        status(uid)
        if cid ~= '' then
          redis.call('PUBLISH', ch, to_client .. '{"type": "executing", "data": {"node": null, "prompt_id": "' .. pid .. '"}}')
        end
        dead = dead + 1
      end
    end
  end
end
if requeued > 0 then redis.call('PUBLISH', ARGV[8], '1') end
return {requeued, dead}
