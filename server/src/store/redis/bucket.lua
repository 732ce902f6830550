-- Takes one start token of a tenant's bucket (store/bucket.rs, the same arithmetic), on the
-- Redis server's clock so that every replica shares one rate.
-- KEYS: 1 bucket hash (tokens, at)
-- ARGV: 1 tokens per second, 2 burst
-- Returns 0 when a token was taken, else the milliseconds until the next one.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = math.max(tonumber(ARGV[2]), 1)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
if now > at then
  tokens = math.min(burst, tokens + (now - at) / 1000 * rate)
  at = now
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
-- Gone once it would be full again anyway.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
