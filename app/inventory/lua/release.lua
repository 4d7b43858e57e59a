-- Give a hold's units back to stock. Keyed by the purchase token, so doing it twice, or after
-- the sweep already returned the hold, gives nothing more.
-- KEYS: inv, holds, units, users, marks, meta
-- ARGV: token
-- Reply: {OK, units_returned} | {NOT_HELD} | {NOT_LOADED}
local inv, holds, units, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[6]
local token = ARGV[1]
if redis.call('EXISTS', inv) == 0 then return {NOT_LOADED} end
local held = redis.call('HGET', units, token)
if not held then return {NOT_HELD} end
local n = tonumber(held)
redis.call('ZREM', holds, token)
redis.call('HDEL', units, token)
redis.call('HDEL', meta, token)
redis.call('HINCRBY', inv, 'available', n)
redis.call('HINCRBY', inv, 'reserved', -n)
return {OK, n}
