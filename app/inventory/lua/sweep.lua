-- Return a deal's ended holds to stock (at most `limit` of them) and report what is left.
-- KEYS: the deal's keys (lib.lua)
-- ARGV: now_ms, limit
-- Reply: {holds_returned, units_returned, next_end_ms (-1 when no hold is left)}
local inv, holds = KEYS[1], KEYS[2]
if redis.call('EXISTS', inv) == 0 then return {0, 0, -1} end
local count, total = reclaim(KEYS, tonumber(ARGV[1]), tonumber(ARGV[2]))
return {count, total, next_end(holds)}
