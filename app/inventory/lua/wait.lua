-- A customer joins the deal's waitlist: at the end of the queue (once: a retry finds it there).
-- Units available now are offered at once, in queue order (lib.lua return_units).
-- KEYS: the deal's keys (lib.lua)
-- ARGV: entry_id, user_id, now_ms
-- Reply: {OK, offers_made} | {NOT_LOADED} | {FOUND}: an offer made to this entry is not written
-- down in SQL yet and has already ended, so SQL still says "waiting": queued again, the entry would
-- get a second offer under the same token. The caller records the deal's offers and joins again.
local K = KEYS
local inv = K[1]
if redis.call('EXISTS', inv) == 0 then return {NOT_LOADED} end
local entry = join(ARGV[1], ARGV[2])
if not redis.call('LPOS', K[9], entry) and redis.call('HEXISTS', K[10], 'wl' .. ARGV[1]) == 0 then
  for _, item in ipairs(redis.call('LRANGE', K[11], 0, -1)) do
    if split(item)[2] == ARGV[1] then return {FOUND} end
  end
  redis.call('RPUSH', K[9], entry)
end
local available = tonumber(redis.call('HGET', inv, 'available'))
if available <= 0 or redis.call('LLEN', K[9]) == 0 then return {OK, 0} end
redis.call('HINCRBY', inv, 'available', -available)
return {OK, return_units(K, available, tonumber(ARGV[3]))}
