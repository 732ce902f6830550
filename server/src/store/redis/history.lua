-- Reads a task's history with its current record and checkpoint list at one instant (see
-- read.lua for why a script).
-- KEYS: 1 history list, 2 task hash, 3 checkpoint list
-- Returns {history entries, the record's JSON or false, the checkpoint list}
return {
  redis.call('LRANGE', KEYS[1], 0, -1),
  redis.call('HGET', KEYS[2], 'json'),
  redis.call('LRANGE', KEYS[3], 0, -1),
}
