-- Replace a deal's live state with one computed from SQL (a rebuild). Refused, without writing
-- anything, when the state would have fewer than 0 units available (SQL itself disagrees with
-- the invariant: reported by the caller, never stored). Running it twice with the same
-- generation loads once: a second run would wipe takes made since the first. Units available
-- while customers wait are offered to them at once (lib.lua return_units).
-- KEYS: the deal's keys (lib.lua)
-- ARGV: gen, account_id, quantity, sold, price, currency, max_per_purchase, max_per_user,
--       title, label, starts_ms, ends_ms, offer_ms, now_ms,
--       hold_count, then hold_count x (token, units, ends_at_ms, user_id ('' for none),
--       waitlist entry id ('' for none)),
--       user_count, then user_count x (user_id, units),
--       waiting_count, then waiting_count x "entry_id|user_id" (first first)
-- Reply: {OK, available, next_end_ms} | {NEGATIVE, available}
local K = KEYS
local inv, holds, users = K[1], K[2], K[4]
if redis.call('HGET', inv, 'gen') == ARGV[1] then
  return {OK, tonumber(redis.call('HGET', inv, 'available')), next_end(holds)}
end
local quantity, sold, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[14])
local hold_count = tonumber(ARGV[15])
local reserved = 0
for h = 0, hold_count - 1 do
  reserved = reserved + tonumber(ARGV[17 + 5 * h])
end
local available = quantity - sold - reserved
if available < 0 then return {NEGATIVE, available} end

redis.call('DEL', unpack(K, 1, #K - 1))  -- all but the last, `refused`: what was answered stays answered
local i = 16
for _ = 1, hold_count do
  hold(K, ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3])
  if ARGV[i + 4] ~= '' then redis.call('HSET', K[10], ARGV[i], ARGV[i + 4]) end
  i = i + 5
end
local user_count = tonumber(ARGV[i])
i = i + 1
for _ = 1, user_count do
  redis.call('HSET', users, ARGV[i], ARGV[i + 1])
  i = i + 2
end
local waiting_count = tonumber(ARGV[i])
i = i + 1
for _ = 1, waiting_count do
  redis.call('RPUSH', K[9], ARGV[i])
  i = i + 1
end
redis.call('HSET', inv,
  'gen', ARGV[1], 'account', ARGV[2], 'quantity', quantity, 'available', 0,
  'reserved', reserved, 'sold', sold, 'price', ARGV[5], 'currency', ARGV[6],
  'max_per_purchase', ARGV[7], 'max_per_user', ARGV[8], 'title', ARGV[9], 'label', ARGV[10],
  'starts', ARGV[11], 'ends', ARGV[12], 'offer_ms', ARGV[13], 'expired', 0)
return_units(K, available, now)
return {OK, tonumber(redis.call('HGET', inv, 'available')), next_end(holds)}
