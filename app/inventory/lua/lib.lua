-- Shared by every script: prepended by app/inventory/scripts.py before the script is loaded.
--
-- One deal's live state, all under the deal's hash tag:
--   inv    hash  account, quantity, available, reserved, sold, gen, price, currency, title,
--                label (the sku a purchase line shows: the deal's sku, or its id),
--                max_per_purchase, max_per_user (0 = none), expired (count, for metrics)
--   holds  zset  purchase token -> instant the hold ends (ms since epoch)
--   units  hash  purchase token -> units held
--   users  hash  user_id -> units in fulfilled purchases (kept only when max_per_user > 0)
--   claims hash  purchase token -> units, for claims whose SQL commit may not have happened
--                yet: a retried claim finds its units already taken instead of taking more.
--                The worker drops entries once SQL shows the purchase fulfilled; a rebuild
--                drops them all (SQL is then the truth).
-- Invariant kept by every script: available + reserved + sold == quantity, and
-- reserved == sum of units over holds.
--
-- Return codes (the first element of every reply); app/inventory/scripts.py maps them.
local OK = 0
local NOT_LOADED = 1
local NOT_FOUND = 2
local SOLD_OUT = 3
local OVER_PURCHASE_LIMIT = 4
local OVER_USER_LIMIT = 5
local NOT_HELD = 6
local PRICE_CHANGED = 7
local STALE = 8

-- Return holds that ended at or before `now` to stock, at most `limit` of them.
-- Reserve and buy call it before they look at stock, so a deal's expired units come back even
-- when no worker runs; the worker's sweep calls it for deals nobody is buying.
local function reclaim(inv, holds, units, now, limit)
  local ended = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, limit)
  if #ended == 0 then
    return 0, 0
  end
  local total = 0
  for _, token in ipairs(ended) do
    total = total + tonumber(redis.call('HGET', units, token) or '0')
  end
  redis.call('ZREM', holds, unpack(ended))
  redis.call('HDEL', units, unpack(ended))
  redis.call('HINCRBY', inv, 'available', total)
  redis.call('HINCRBY', inv, 'reserved', -total)
  redis.call('HINCRBY', inv, 'expired', #ended)
  return #ended, total
end

-- Earliest end among the deal's holds, or -1 when it has none.
local function next_end(holds)
  local first = redis.call('ZRANGE', holds, 0, 0, 'WITHSCORES')
  if #first == 0 then
    return -1
  end
  return tonumber(first[2])
end

-- Whether `user` may take `n` more units; 0 when the deal has no per-user cap.
local function over_user_limit(inv, users, user, n)
  local cap = tonumber(redis.call('HGET', inv, 'max_per_user') or '0')
  if cap <= 0 or user == '' then
    return false, cap, 0
  end
  local already = tonumber(redis.call('HGET', users, user) or '0')
  return already + n > cap, cap, already
end

local function count_user(inv, users, user, n)
  if user ~= '' and tonumber(redis.call('HGET', inv, 'max_per_user') or '0') > 0 then
    redis.call('HINCRBY', users, user, n)
  end
end

