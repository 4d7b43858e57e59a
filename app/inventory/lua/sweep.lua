-- Return a deal's ended holds to stock (at most `limit` of them) and report what is left.
-- KEYS: inv, holds, units, users, marks, meta
-- ARGV: now_ms, limit
-- Reply: {holds_returned, units_returned, next_end_ms (-1 when no hold is left)}
local inv, holds, units, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[6]
if redis.call('EXISTS', inv) == 0 then return {0, 0, -1} end
local count, total = reclaim(inv, holds, units, meta, tonumber(ARGV[1]), tonumber(ARGV[2]))
return {count, total, next_end(holds)}
