-- Give a hold's units back to stock (to the waiting customers first). Keyed by the purchase
-- token, so doing it twice, or after the sweep already returned the hold, gives nothing more.
-- KEYS: the deal's keys (lib.lua)
-- ARGV: token, now_ms
-- Reply: {OK, units_returned} | {NOT_HELD} | {NOT_LOADED}
local K = KEYS
local inv, holds, units, meta, holding = K[1], K[2], K[3], K[6], K[8]
local token = ARGV[1]
if redis.call('EXISTS', inv) == 0 then return {NOT_LOADED} end
local held = redis.call('HGET', units, token)
if not held then return {NOT_HELD} end
local n = tonumber(held)
redis.call('ZREM', holds, token)
redis.call('HDEL', units, token)
redis.call('HDEL', meta, token)
unhold(K, token, n)
redis.call('HINCRBY', inv, 'reserved', -n)
return_units(K, n, tonumber(ARGV[2]))
return {OK, n}
