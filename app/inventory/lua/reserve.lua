-- Hold `units` of a deal for one purchase until `ends_at`.
-- KEYS: inv, holds, units, users, marks, meta
-- ARGV: account_id, token, nonce, units, now_ms, ends_at_ms, reclaim_limit
-- Reply: {OK, gen, available_after, needs_index, price, currency, ends_at_ms}
--          needs_index = 1 when this hold ends before every other hold of the deal (the sweep
--          index must learn about it)
--        {FOUND, ...} (lib.lua found_reply) when the token already has a hold or a mark here
--        {NOT_LOADED} | {NOT_FOUND} | {OVER_PURCHASE_LIMIT, max} | {SOLD_OUT, available}
local inv, holds, units, marks, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6]
local account, token, nonce = ARGV[1], ARGV[2], ARGV[3]
local n, now, ends_at = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

local deal = redis.call('HMGET', inv, 'account', 'gen', 'max_per_purchase', 'price', 'currency')
if not deal[1] then return {NOT_LOADED} end
if deal[1] ~= account then return {NOT_FOUND} end
local cap = tonumber(deal[3])
if cap > 0 and n > cap then return {OVER_PURCHASE_LIMIT, cap} end

reclaim(inv, holds, units, meta, now, tonumber(ARGV[7]))

local already = found(holds, units, marks, meta, token)
if already then return found_reply(inv, deal[2], already) end

local available = tonumber(redis.call('HGET', inv, 'available'))
if available < n then return {SOLD_OUT, available} end

local first = next_end(holds)
redis.call('HINCRBY', inv, 'available', -n)
redis.call('HINCRBY', inv, 'reserved', n)
redis.call('ZADD', holds, ends_at, token)
redis.call('HSET', units, token, n)
set_meta(meta, token, nonce, now)
local needs_index = 0
if first < 0 or ends_at < first then needs_index = 1 end
return {OK, deal[2], available - n, needs_index, deal[4], deal[5], ends_at}
