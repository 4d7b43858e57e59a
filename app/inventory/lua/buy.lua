-- Sell units straight from stock (a direct purchase, or a v3 product line naming the deal).
-- KEYS: inv, holds, units, users, marks, meta
-- ARGV: account_id, token, nonce, units, user_id ('' for none), expected_price ('' to skip the
--       check), now_ms, reclaim_limit
-- Reply: {OK, gen, available_after, price, currency, title, label}
--        {FOUND, ...} (lib.lua found_reply) when the token already has a hold or a mark here
--        {NOT_LOADED} | {NOT_FOUND} | {OVER_PURCHASE_LIMIT, max} | {PRICE_CHANGED, price}
--        | {OVER_USER_LIMIT, cap, already} | {SOLD_OUT, available}
local inv, holds, units, users, marks, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
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

reclaim(inv, holds, units, meta, now, tonumber(ARGV[8]))

local already = found(holds, units, marks, meta, token)
if already then return found_reply(inv, deal[2], already) end

local over, ucap, had = over_user_limit(inv, users, user, n)
if over then return {OVER_USER_LIMIT, ucap, had} end

local available = tonumber(redis.call('HGET', inv, 'available'))
if available < n then return {SOLD_OUT, available} end

redis.call('HINCRBY', inv, 'available', -n)
redis.call('HINCRBY', inv, 'sold', n)
count_user(inv, users, user, n)
redis.call('HSET', marks, token, n .. '|' .. user .. '|0|0')
set_meta(meta, token, nonce, now)
return {OK, deal[2], available - n, deal[4], deal[5], deal[6], deal[7]}
