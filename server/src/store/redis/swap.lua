-- Compare-and-set of one task record, with everything that must change with it.
-- Refuses (returns 'conflict') unless the stored version is the new one minus one, the
-- stored state is not terminal, and the write comes from the same owner and attempt (or
-- starts the next attempt of a PENDING task): a replica that lost a task cannot write to it.
-- KEYS: 1 task hash, 2 pending zset, 3 active zset, 4 history list, 5 owned set of the owner,
--       6 owners set, 7 request_id key, 8 children zset of this task, 9 checkpoint list,
--       10 active zset of the task's kind, 11 active zset of its session,
--       12 active zset of its tenant, 13 pending zset of its tenant,
--       14 set of tenants with pending tasks
-- ARGV: 1 task JSON without checkpoints, 2 new version, 3 state, 4 owner, 5 attempt,
--       6 terminal ('1'/'0'), 7 id, 8 retention ms, 9 history length, 10 task channel,
--       11 owner channel, 12 has request_id ('1'/'0'), 13 owned-set key prefix,
--       14 the whole task JSON (published), 15 checkpoints kept so far (position past the
--       newest), 16 list entries to keep, 17 the newest checkpoint's JSON ('' if none),
--       18 has session ('1'/'0'), 19 tenant
local current = redis.call('HMGET', KEYS[1], 'version', 'terminal', 'owner', 'attempt', 'state')
if not current[1] then
  return 'missing'
end
if current[2] == '1' or tonumber(current[1]) + 1 ~= tonumber(ARGV[2]) then
  return 'conflict'
end
local same_run = current[3] == ARGV[4] and current[4] == ARGV[5]
local started = current[5] == 'Pending' and tonumber(ARGV[5]) == tonumber(current[4]) + 1
local requeued = ARGV[3] == 'Pending' and ARGV[4] == '' and current[4] == ARGV[5]
if not (same_run or started or requeued) then
  return 'conflict'
end
-- Checkpoints: a version appends at most its one new checkpoint, whatever it keeps.
local kept = tonumber(redis.call('HGET', KEYS[1], 'checkpoints') or '0')
if tonumber(ARGV[15]) > kept and ARGV[17] ~= '' then
  redis.call('RPUSH', KEYS[9], ARGV[17])
end
redis.call('LTRIM', KEYS[9], -tonumber(ARGV[16]), -1)
redis.call('HSET', KEYS[1], 'json', ARGV[1], 'version', ARGV[2], 'state', ARGV[3],
  'owner', ARGV[4], 'attempt', ARGV[5], 'terminal', ARGV[6], 'checkpoints', ARGV[15])
if ARGV[3] ~= 'Pending' then
  redis.call('ZREM', KEYS[2], ARGV[7])
  redis.call('ZREM', KEYS[13], ARGV[7])
  if redis.call('ZCARD', KEYS[13]) == 0 then
    redis.call('SREM', KEYS[14], ARGV[19])
  end
elseif requeued and current[5] ~= 'Pending' then
  -- A lost run goes back to the queue and off its former owner's list.
  redis.call('ZADD', KEYS[2], 0, ARGV[7])
  redis.call('ZADD', KEYS[13], 0, ARGV[7])
  redis.call('SADD', KEYS[14], ARGV[19])
  redis.call('SREM', ARGV[13] .. current[3], ARGV[7])
end
if started then
  redis.call('SADD', KEYS[5], ARGV[7])
  redis.call('SADD', KEYS[6], ARGV[4])
end
redis.call('RPUSH', KEYS[4], ARGV[1])
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[9]), -1)
if ARGV[6] == '1' then
  redis.call('ZREM', KEYS[3], ARGV[7])
  redis.call('ZREM', KEYS[10], ARGV[7])
  redis.call('ZREM', KEYS[12], ARGV[7])
  if ARGV[18] == '1' then
    redis.call('ZREM', KEYS[11], ARGV[7])
  end
  if ARGV[4] ~= '' then
    redis.call('SREM', KEYS[5], ARGV[7])
  end
  local retention = tonumber(ARGV[8])
  redis.call('PEXPIRE', KEYS[1], retention)
  redis.call('PEXPIRE', KEYS[4], retention)
  redis.call('PEXPIRE', KEYS[8], retention)
  redis.call('PEXPIRE', KEYS[9], retention)
  if ARGV[12] == '1' then
    redis.call('PEXPIRE', KEYS[7], retention)
  end
end
redis.call('PUBLISH', ARGV[10], ARGV[14])
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[11], ARGV[14])
end
return 'ok'
