-- Sell units straight from stock (a direct purchase, or a v3 product line naming the deal).
-- KEYS: inv, holds, units, users
-- ARGV: account_id, units, user_id ('' for none), expected_price ('' to skip the check),
--       now_ms, reclaim_limit
-- Reply: {OK, gen, available_after, price, currency, title, label}
--        {NOT_LOADED} | {NOT_FOUND} | {OVER_PURCHASE_LIMIT, max} | {PRICE_CHANGED, price}
--        | {OVER_USER_LIMIT, cap, already} | {SOLD_OUT, available}
local inv, holds, units, users = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local account, user, expected = ARGV[1], ARGV[3], ARGV[4]
local n = tonumber(ARGV[2])

local deal = redis.call('HMGET', inv, 'account', 'gen', 'max_per_purchase', 'price', 'currency', 'title', 'label')
if not deal[1] then return {NOT_LOADED} end
if deal[1] ~= account then return {NOT_FOUND} end
local cap = tonumber(deal[3])
if cap > 0 and n > cap then return {OVER_PURCHASE_LIMIT, cap} end
if expected ~= '' and tonumber(expected) ~= tonumber(deal[4]) then
  return {PRICE_CHANGED, tonumber(deal[4])}
end

local over, ucap, already = over_user_limit(inv, users, user, n)
if over then return {OVER_USER_LIMIT, ucap, already} end

reclaim(inv, holds, units, tonumber(ARGV[5]), tonumber(ARGV[6]))
local available = tonumber(redis.call('HGET', inv, 'available'))
if available < n then return {SOLD_OUT, available} end

redis.call('HINCRBY', inv, 'available', -n)
redis.call('HINCRBY', inv, 'sold', n)
count_user(inv, users, user, n)
return {OK, deal[2], available - n, deal[4], deal[5], deal[6], deal[7]}
