-- Pushes forward the lapse time of a replica's holders of one tenant's counted places.
-- KEYS: 1 the tenant's sorted set of holders
-- ARGV: 1 ttl ms, 2… holders
local time = redis.call('TIME')
local until_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 0
