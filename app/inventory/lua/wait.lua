-- A customer joins the deal's waitlist: at the end of the queue (once: a retry finds it there).
-- Units available now are offered at once, in queue order (lib.lua return_units).
-- KEYS: the deal's keys (lib.lua)
-- ARGV: entry_id, user_id, now_ms
-- Reply: {OK, offers_made} | {NOT_LOADED}
local K = KEYS
local inv = K[1]
if redis.call('EXISTS', inv) == 0 then return {NOT_LOADED} end
local entry = join(ARGV[1], ARGV[2])
if not redis.call('LPOS', K[9], entry) and redis.call('HEXISTS', K[10], 'wl' .. ARGV[1]) == 0 then
  redis.call('RPUSH', K[9], entry)
end
local available = tonumber(redis.call('HGET', inv, 'available'))
if available <= 0 or redis.call('LLEN', K[9]) == 0 then return {OK, 0} end
redis.call('HINCRBY', inv, 'available', -available)
return {OK, return_units(K, available, tonumber(ARGV[3]))}
