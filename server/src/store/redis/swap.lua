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
--       18 has session ('1'/'0'), 19 owner-channel key prefix, 20 worker, 21 tenant,
--       22 the publish command ('PUBLISH', or 'SPUBLISH' on a cluster: the channels are in
--       the task's slot), 23 number n of usage dimensions spent (0 for none),
--       24 .. 23 + 2n: dimension, increment pairs
-- KEYS 15..: the task hashes of the task's ancestors, nearest first (usage roll-up)
-- Returns 'ok' | 'ok-childless' (a terminal write, no children set) | 'conflict' | 'missing';
-- with usage spent, {'ok', spending...} where each
-- spending is {chain index (0 = this task), dimension, limit, before, after, ...} for the
-- budget of each task of the chain that has one.
local current = redis.call('HMGET', KEYS[1], 'version', 'terminal', 'owner', 'attempt', 'state', 'worker')
if not current[1] then
  return 'missing'
end
if current[2] == '1' or tonumber(current[1]) + 1 ~= tonumber(ARGV[2]) then
  return 'conflict'
end
local same_run = current[3] == ARGV[4] and current[4] == ARGV[5]
local started = current[5] == 'Pending' and tonumber(ARGV[5]) == tonumber(current[4]) + 1
local requeued = ARGV[3] == 'Pending' and ARGV[4] == '' and current[4] == ARGV[5]
-- A worker moved to another replica and took its task along: same attempt, new owner, on
-- a newer connection (the id after the last '/' of the worker label is a UUIDv7, so it
-- compares greater; a stale writer cannot pass its old connection off as a move).
local function connection(worker)
  return worker and string.match(worker, '/([^/]+)$')
end
local from, to = connection(current[6]), connection(ARGV[20])
local moved = current[5] ~= 'Pending' and ARGV[3] ~= 'Pending' and current[4] == ARGV[5]
  and ARGV[4] ~= '' and current[3] ~= ARGV[4] and from ~= nil and to ~= nil and to > from
if not (same_run or started or requeued or moved) then
  return 'conflict'
end
-- Checkpoints: a version appends at most its one new checkpoint, whatever it keeps.
local kept = tonumber(redis.call('HGET', KEYS[1], 'checkpoints') or '0')
if tonumber(ARGV[15]) > kept and ARGV[17] ~= '' then
  redis.call('RPUSH', KEYS[9], ARGV[17])
end
redis.call('LTRIM', KEYS[9], -tonumber(ARGV[16]), -1)
redis.call('HSET', KEYS[1], 'json', ARGV[1], 'version', ARGV[2], 'state', ARGV[3],
  'owner', ARGV[4], 'attempt', ARGV[5], 'terminal', ARGV[6], 'checkpoints', ARGV[15],
  'worker', ARGV[20])
if ARGV[3] ~= 'Pending' then
  redis.call('ZREM', KEYS[2], ARGV[7])
  redis.call('ZREM', KEYS[13], ARGV[7])
  if redis.call('ZCARD', KEYS[13]) == 0 then
    redis.call('SREM', KEYS[14], ARGV[21])
  end
elseif requeued and current[5] ~= 'Pending' then
  -- A lost run goes back to the queue and off its former owner's list.
  redis.call('ZADD', KEYS[2], 0, ARGV[7])
  redis.call('ZADD', KEYS[13], 0, ARGV[7])
  redis.call('SADD', KEYS[14], ARGV[21])
  redis.call('SREM', ARGV[13] .. current[3], ARGV[7])
end
if started or moved then
  redis.call('SADD', KEYS[5], ARGV[7])
  redis.call('SADD', KEYS[6], ARGV[4])
end
if moved then
  redis.call('SREM', ARGV[13] .. current[3], ARGV[7])
  -- The former owner lets go of the task at once.
  redis.call(ARGV[22], ARGV[19] .. current[3], ARGV[14])
end
redis.call('RPUSH', KEYS[4], ARGV[1])
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[9]), -1)
local childless = false
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
  -- 0: no children set, so the engine need not look for children to release.
  childless = redis.call('PEXPIRE', KEYS[8], retention) == 0
  redis.call('PEXPIRE', KEYS[9], retention)
  if ARGV[12] == '1' then
    redis.call('PEXPIRE', KEYS[7], retention)
  end
end
redis.call(ARGV[22], ARGV[10], ARGV[14])
if ARGV[4] ~= '' then
  redis.call(ARGV[22], ARGV[11], ARGV[14])
end
-- Usage roll-up: the increments go to the subtree usage ('s:<dimension>' fields) of the
-- task and of every ancestor still stored, in this same transaction.
local n = tonumber(ARGV[23] or '0')
if n == 0 then
  if childless then
    return 'ok-childless'
  end
  return 'ok'
end
local chain = {KEYS[1]}
for k = 15, #KEYS do
  chain[#chain + 1] = KEYS[k]
end
local reply = {'ok'}
for index, key in ipairs(chain) do
  if index == 1 or redis.call('EXISTS', key) == 1 then
    local raw = redis.call('HGET', key, 'budget')
    -- {dimension: limit}, the limits as strings so they come back exact.
    local budget = {}
    if raw and raw ~= '' then
      budget = cjson.decode(raw)
    end
    local before = {}
    for dimension, _ in pairs(budget) do
      before[dimension] = redis.call('HGET', key, 's:' .. dimension) or '0'
    end
    -- At most 16 dimensions per task (budget::MAX_DIMENSIONS; a budget's are there from
    -- the start): further ones are not counted, so a record stays bounded.
    for d = 0, n - 1 do
      local field = 's:' .. ARGV[24 + 2 * d]
      local known = redis.call('HEXISTS', key, field) == 1
      if known or tonumber(redis.call('HGET', key, 'dimensions') or '0') < 16 then
        if not known then
          redis.call('HINCRBY', key, 'dimensions', 1)
        end
        redis.call('HINCRBYFLOAT', key, field, ARGV[25 + 2 * d])
      end
    end
    local entry = {tostring(index - 1)}
    for dimension, limit in pairs(budget) do
      entry[#entry + 1] = dimension
      entry[#entry + 1] = limit
      entry[#entry + 1] = before[dimension]
      entry[#entry + 1] = redis.call('HGET', key, 's:' .. dimension) or '0'
    end
    if #entry > 1 then
      reply[#reply + 1] = entry
    end
  end
end
return reply
