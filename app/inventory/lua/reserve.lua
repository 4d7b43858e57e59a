-- Hold `units` of a deal for one purchase until `ends_at`, for customer `user` ('' for none).
-- KEYS: the deal's keys (lib.lua)
-- ARGV: account_id, token, nonce, units, now_ms, ends_at_ms, reclaim_limit, user_id, since_ms (when
--       the request began; 0 for a token no other request shares: lib.lua check_take)
-- Reply: {OK, gen, available_after, needs_index, price, currency, ends_at_ms}
--          needs_index = 1 when this hold ends before every other hold of the deal (the sweep
--          index must learn about it)
--        {FOUND, ...} (lib.lua found_reply) when the token already has a hold or a mark here
--        {NOT_LOADED} | {NOT_FOUND} | {OVER_PURCHASE_LIMIT, max} | {NOT_STARTED, starts_ms}
--        | {SALE_ENDED, ends_ms} | {OVER_USER_LIMIT, cap, already} | {SOLD_OUT, available}
--        | {REFUSED} | {TOO_OLD}
local K = KEYS
local inv, holds = K[1], K[2]
local account, token, nonce, user = ARGV[1], ARGV[2], ARGV[3], ARGV[8]
local n, now, ends_at = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

local deal = redis.call('HMGET', inv, 'account', 'gen', 'max_per_purchase', 'price', 'currency')
if not deal[1] then return {NOT_LOADED} end
if deal[1] ~= account then return {NOT_FOUND} end
local cap = tonumber(deal[3])
if cap > 0 and n > cap then return {OVER_PURCHASE_LIMIT, cap} end
local refused, available = check_take(K, deal[2], token, user, n, now, tonumber(ARGV[7]), tonumber(ARGV[9]))
if refused then return refused end

local first = next_end(holds)
redis.call('HINCRBY', inv, 'available', -n)
redis.call('HINCRBY', inv, 'reserved', n)
hold(K, token, n, ends_at, user)
set_meta(K[6], token, nonce, now)
local needs_index = 0
if first < 0 or ends_at < first then needs_index = 1 end
return {OK, deal[2], available - n, needs_index, deal[4], deal[5], ends_at}
