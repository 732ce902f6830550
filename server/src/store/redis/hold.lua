-- Takes one of a tenant's counted places (its watchers or workers) for a holder, unless
-- the tenant already holds `max` live ones. Each member's score is when it lapses (ms, the
-- Redis server's clock): the replica holding it pushes that forward while it lives, so
-- the places of a replica that died lapse by themselves.
-- KEYS: 1 the tenant's sorted set of holders
-- ARGV: 1 holder, 2 max, 3 ttl ms
-- Returns 1 when taken, 0 when the tenant is at its max.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return 1
