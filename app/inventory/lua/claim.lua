-- Turn a purchase's hold into sold units; with no hold (released, expired, swept), take the
-- units from stock again (inside the deal's sale window).
-- KEYS: the deal's keys (lib.lua)
-- ARGV: account_id, token, nonce, units (used only when there is no hold), user_id, now_ms,
--       since_ms and name (when a keyed claim's request began and its key's token, for
--       lib.lua answered_since; 0 and '' for an unkeyed claim)
-- Reply: {OK, gen, from_hold (1 | 0), units_sold, available_after, title, label}
--        {FOUND, ...} (lib.lua found_reply) when a mark says a claim of this purchase took its
--          units already (running, committed, or abandoned)
--        {NOT_LOADED} | {NOT_FOUND} | {SOLD_OUT, available} | {OVER_USER_LIMIT, cap, already}
--        | {SALE_ENDED, ends_ms} (no hold left, and the sale is over) | {REFUSED} | {TOO_OLD}
local K = KEYS
local inv, holds, units, users, marks, holding = K[1], K[2], K[3], K[4], K[5], K[8]
local account, token, nonce, user = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local now, since, name = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]

local deal = redis.call('HMGET', inv, 'account', 'gen', 'available', 'title', 'label')
if not deal[1] then return {NOT_LOADED} end
if deal[1] ~= account then return {NOT_FOUND} end

if redis.call('HEXISTS', marks, token) == 1 then
  return found_reply(inv, deal[2], found(K, token))
end
local answered = answered_since(K[12], name, now, since)
if answered then return answered end

-- A hold past its end that no sweep has returned yet still counts: it is the buyer's until
-- the units are actually back in stock.
local held = redis.call('HGET', units, token)
local n = tonumber(held or ARGV[4])
local holder = redis.call('HGET', K[7], token) or ''

-- Units held for this user were counted against the cap when they were reserved.
if holder ~= user then
  local over, cap, had = over_user_limit(inv, users, holding, user, n)
  if over then
    if since > 0 then note_refusal(K[12], name, now) end
    return {OVER_USER_LIMIT, cap, had}
  end
end

local from_hold, ends, available = 0, 0, tonumber(deal[3])
if held then
  from_hold, ends = 1, tonumber(redis.call('ZSCORE', holds, token))
  redis.call('ZREM', holds, token)
  redis.call('HDEL', units, token)
  unhold(K, token, n)
  redis.call('HINCRBY', inv, 'reserved', -n)
else
  local closed = outside_window(inv, now)
  if closed and closed[1] == SALE_ENDED then return closed end
  if available < n then
    if since > 0 then note_refusal(K[12], name, now) end
    return {SOLD_OUT, available}
  end
  available = available - n
  redis.call('HINCRBY', inv, 'available', -n)
end
redis.call('HINCRBY', inv, 'sold', n)
count_user(inv, users, user, n)
redis.call('HSET', marks, token, join(n, user, from_hold, ends, holder))
set_meta(K[6], token, nonce, now)
return {OK, deal[2], from_hold, n, available, deal[4], deal[5]}
