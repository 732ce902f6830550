-- Inserts a new task, unless its request_id already names a live task.
-- KEYS: 1 task hash, 2 request_id key, 3 active zset, 4 pending zset,
--       5 children zset of the parent, 6 history list, 7 active zset of the kind,
--       8 active zset of the session, 9 the session's cancelled mark, 10 active zset of
--       the tenant, 11 pending zset of the tenant, 12 set of tenants with pending tasks
-- ARGV: 1 task JSON, 2 id, 3 version, 4 state, 5 has request_id ('1'/'0'),
--       6 has parent ('1'/'0'), 7 task-key prefix, 8 has session ('1'/'0'),
--       9 the budget as a JSON object ('' if none): read by swap.lua's usage roll-up,
--       10 the tenant's most active tasks ('' for no cap), 11 tenant
-- Returns {'existing', json} | {'session-cancelled'} | {'quota'} (the tenant is at its
-- cap) | {'new-first'} (no older task pending) | {'new'}
if ARGV[5] == '1' then
  local existing = redis.call('GET', KEYS[2])
  if existing then
    local json = redis.call('HGET', ARGV[7] .. existing, 'json')
    if json then
      return {'existing', json}
    end
  end
end
-- A session marked cancelled takes no new task (a retried request above still gets its own).
if ARGV[8] == '1' and redis.call('EXISTS', KEYS[9]) == 1 then
  return {'session-cancelled'}
end
if ARGV[10] ~= '' and redis.call('ZCARD', KEYS[10]) >= tonumber(ARGV[10]) then
  return {'quota'}
end
if ARGV[5] == '1' then
  redis.call('SET', KEYS[2], ARGV[2])
end
redis.call('ZADD', KEYS[10], 0, ARGV[2])
redis.call('HSET', KEYS[1], 'json', ARGV[1], 'version', ARGV[3], 'state', ARGV[4],
  'owner', '', 'attempt', '0', 'terminal', '0')
if ARGV[9] and ARGV[9] ~= '' then
  -- The budget's dimensions are counted from the start (see swap.lua's roll-up).
  redis.call('HSET', KEYS[1], 'budget', ARGV[9])
  local count = 0
  for dimension, _ in pairs(cjson.decode(ARGV[9])) do
    redis.call('HSET', KEYS[1], 's:' .. dimension, '0')
    count = count + 1
  end
  redis.call('HSET', KEYS[1], 'dimensions', count)
end
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('ZADD', KEYS[7], 0, ARGV[2])
if ARGV[8] == '1' then
  redis.call('ZADD', KEYS[8], 0, ARGV[2])
end
local first = false
if ARGV[4] == 'Pending' then
  redis.call('ZADD', KEYS[4], 0, ARGV[2])
  redis.call('ZADD', KEYS[11], 0, ARGV[2])
  redis.call('SADD', KEYS[12], ARGV[11])
  -- Ids sort by creation time: the first member is the oldest task waiting.
  first = redis.call('ZRANGE', KEYS[4], 0, 0)[1] == ARGV[2]
end
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[5], 0, ARGV[2])
end
redis.call('RPUSH', KEYS[6], ARGV[1])
if first then
  return {'new-first'}
end
return {'new'}
