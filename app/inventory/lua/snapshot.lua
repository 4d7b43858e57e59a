-- A deal's live numbers as of `now` (ended holds are returned to stock first).
-- KEYS: the deal's keys (lib.lua)
-- ARGV: now_ms, reclaim_limit
-- Reply: {OK, quantity, available, reserved, sold, holds, account, gen} | {NOT_LOADED}
local inv, holds = KEYS[1], KEYS[2]
if redis.call('EXISTS', inv) == 0 then return {NOT_LOADED} end
reclaim(KEYS, tonumber(ARGV[1]), tonumber(ARGV[2]))
local v = redis.call('HMGET', inv, 'quantity', 'available', 'reserved', 'sold', 'account', 'gen')
return {OK, tonumber(v[1]), tonumber(v[2]), tonumber(v[3]), tonumber(v[4]),
        redis.call('ZCARD', holds), v[5], v[6]}
