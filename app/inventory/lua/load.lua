-- Replace a deal's live state with one computed from SQL (a rebuild).
-- KEYS: inv, holds, units, users, claims
-- ARGV: gen, account_id, quantity, sold, price, currency, max_per_purchase, max_per_user,
--       title, label, hold_count, then hold_count x (token, units, ends_at_ms),
--       user_count, then user_count x (user_id, units)
-- Reply: {OK, available, next_end_ms}
local inv, holds, units, users, claims = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
redis.call('DEL', inv, holds, units, users, claims)
local quantity, sold = tonumber(ARGV[3]), tonumber(ARGV[4])
local reserved = 0
local hold_count = tonumber(ARGV[11])
local i = 12
for _ = 1, hold_count do
  local token, n, ends_at = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  redis.call('ZADD', holds, ends_at, token)
  redis.call('HSET', units, token, n)
  reserved = reserved + n
  i = i + 3
end
local user_count = tonumber(ARGV[i])
i = i + 1
for _ = 1, user_count do
  redis.call('HSET', users, ARGV[i], ARGV[i + 1])
  i = i + 2
end
local available = quantity - sold - reserved
redis.call('HSET', inv,
  'gen', ARGV[1], 'account', ARGV[2], 'quantity', quantity, 'available', available,
  'reserved', reserved, 'sold', sold, 'price', ARGV[5], 'currency', ARGV[6],
  'max_per_purchase', ARGV[7], 'max_per_user', ARGV[8], 'title', ARGV[9], 'label', ARGV[10],
  'expired', 0)
return {OK, available, next_end(holds)}
