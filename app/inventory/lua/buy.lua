-- Sell units straight from stock (a direct purchase, or a v3 product line naming the deal).
-- KEYS: the deal's keys (lib.lua)
-- ARGV: account_id, token, nonce, units, user_id ('' for none), expected_price ('' to skip the
--       check), now_ms, reclaim_limit, since_ms (lib.lua check_take)
-- Reply: {OK, gen, available_after, price, currency, title, label}
--        {FOUND, ...} (lib.lua found_reply) when the token already has a hold or a mark here
--        {NOT_LOADED} | {NOT_FOUND} | {OVER_PURCHASE_LIMIT, max} | {PRICE_CHANGED, price}
--        | {NOT_STARTED, starts_ms} | {SALE_ENDED, ends_ms} | {OVER_USER_LIMIT, cap, already}
--        | {SOLD_OUT, available} | {REFUSED} | {TOO_OLD}
local K = KEYS
local inv, users, marks = K[1], K[4], K[5]
local account, token, nonce, user, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[6]
local n, now = tonumber(ARGV[4]), tonumber(ARGV[7])

local deal = redis.call('HMGET', inv, 'account', 'gen', 'max_per_purchase', 'price', 'currency', 'title', 'label')
if not deal[1] then return {NOT_LOADED} end
if deal[1] ~= account then return {NOT_FOUND} end
local cap = tonumber(deal[3])
if cap > 0 and n > cap then return {OVER_PURCHASE_LIMIT, cap} end
if expected ~= '' and tonumber(expected) ~= tonumber(deal[4]) then
  return {PRICE_CHANGED, tonumber(deal[4])}
end
local refused, available = check_take(K, deal[2], token, user, n, now, tonumber(ARGV[8]), tonumber(ARGV[9]))
if refused then return refused end

redis.call('HINCRBY', inv, 'available', -n)
redis.call('HINCRBY', inv, 'sold', n)
count_user(inv, users, user, n)
redis.call('HSET', marks, token, join(n, user, 0, 0, ''))
set_meta(K[6], token, nonce, now)
return {OK, deal[2], available - n, deal[4], deal[5], deal[6], deal[7]}
