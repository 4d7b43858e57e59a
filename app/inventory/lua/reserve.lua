-- Hold `units` of a deal for one purchase until `ends_at`.
-- KEYS: inv, holds, units
-- ARGV: account_id, token, units, now_ms, ends_at_ms, reclaim_limit
-- Reply: {OK, gen, available_after, needs_index, price, currency}   needs_index = 1 when this hold ends before
--                                                  every other hold of the deal (the sweep
--                                                  index must learn about it)
--        {NOT_LOADED} | {NOT_FOUND} | {OVER_PURCHASE_LIMIT, max} | {SOLD_OUT, available, gen}
local inv, holds, units = KEYS[1], KEYS[2], KEYS[3]
local account, token = ARGV[1], ARGV[2]
local n, now, ends_at = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

local deal = redis.call('HMGET', inv, 'account', 'gen', 'max_per_purchase', 'price', 'currency')
if not deal[1] then return {NOT_LOADED} end
if deal[1] ~= account then return {NOT_FOUND} end
local cap = tonumber(deal[3])
if cap > 0 and n > cap then return {OVER_PURCHASE_LIMIT, cap} end

reclaim(inv, holds, units, now, tonumber(ARGV[6]))

-- The same token again (a retry after a lost reply): the hold already exists.
if redis.call('HEXISTS', units, token) == 1 then
  return {OK, deal[2], tonumber(redis.call('HGET', inv, 'available')), 0, deal[4], deal[5]}
end

local available = tonumber(redis.call('HGET', inv, 'available'))
if available < n then return {SOLD_OUT, available, deal[2]} end

local first = next_end(holds)
redis.call('HINCRBY', inv, 'available', -n)
redis.call('HINCRBY', inv, 'reserved', n)
redis.call('ZADD', holds, ends_at, token)
redis.call('HSET', units, token, n)
local needs_index = 0
if first < 0 or ends_at < first then needs_index = 1 end
return {OK, deal[2], available - n, needs_index, deal[4], deal[5]}
