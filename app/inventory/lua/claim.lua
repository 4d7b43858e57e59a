-- Turn a purchase's hold into sold units; with no hold (released, expired, swept), take the
-- units from stock again.
-- KEYS: inv, holds, units, users, claims
-- ARGV: account_id, token, units (used only when there is no hold), user_id
-- Reply: {OK, from (1 hold | 0 stock | 2 already claimed here), units_sold, gen, available_after,
--         title, label}
--        {NOT_LOADED} | {NOT_FOUND} | {SOLD_OUT, available} | {OVER_USER_LIMIT, cap, already}
local inv, holds, units, users, claims = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local account, token, user = ARGV[1], ARGV[2], ARGV[4]

local deal = redis.call('HMGET', inv, 'account', 'gen', 'available', 'title', 'label')
if not deal[1] then return {NOT_LOADED} end
if deal[1] ~= account then return {NOT_FOUND} end

-- A retry of a claim whose first attempt took the units but died before its SQL commit.
local claimed = redis.call('HGET', claims, token)
if claimed then return {OK, 2, tonumber(claimed), deal[2], tonumber(deal[3]), deal[4], deal[5]} end

-- A hold past its end that no sweep has returned yet still counts: it is the buyer's until
-- the units are actually back in stock.
local held = redis.call('HGET', units, token)
local n = tonumber(held or ARGV[3])

local over, cap, already = over_user_limit(inv, users, user, n)
if over then return {OVER_USER_LIMIT, cap, already} end

if held then
  redis.call('ZREM', holds, token)
  redis.call('HDEL', units, token)
  redis.call('HINCRBY', inv, 'reserved', -n)
else
  if tonumber(deal[3]) < n then return {SOLD_OUT, tonumber(deal[3])} end
  redis.call('HINCRBY', inv, 'available', -n)
end
redis.call('HINCRBY', inv, 'sold', n)
count_user(inv, users, user, n)
redis.call('HSET', claims, token, n)
if held then return {OK, 1, n, deal[2], tonumber(deal[3]), deal[4], deal[5]} end
return {OK, 0, n, deal[2], tonumber(deal[3]) - n, deal[4], deal[5]}
