-- Reads task records with their checkpoint lists, each pair at one instant (a script is
-- atomic, and on a cluster it is one command the client routes and re-routes by its keys,
-- where a MULTI/EXEC aborts on a moved slot).
-- KEYS: pairs of (task hash, checkpoint list), all of one shard
-- Returns, per pair, {the hash as field, value, …; the list}
local found = {}
for k = 1, #KEYS, 2 do
  found[#found + 1] = {redis.call('HGETALL', KEYS[k]), redis.call('LRANGE', KEYS[k + 1], 0, -1)}
end
return found
