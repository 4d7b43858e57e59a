-- Give a hold's units back to stock. Keyed by the purchase token, so doing it twice, or after
-- the sweep already returned the hold, gives nothing more.
-- KEYS: inv, holds, units
-- ARGV: token
-- Reply: {OK, units_returned} | {NOT_HELD} | {NOT_LOADED}
local inv, holds, units = KEYS[1], KEYS[2], KEYS[3]
local token = ARGV[1]
if redis.call('EXISTS', inv) == 0 then return {NOT_LOADED} end
local held = redis.call('HGET', units, token)
if not held then return {NOT_HELD} end
local n = tonumber(held)
redis.call('ZREM', holds, token)
redis.call('HDEL', units, token)
redis.call('HINCRBY', inv, 'available', n)
redis.call('HINCRBY', inv, 'reserved', -n)
return {OK, n}
