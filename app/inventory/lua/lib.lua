-- Shared by every script: prepended by app/inventory/scripts.py before the script is loaded.
--
-- One deal's live state, all under the deal's hash tag:
--   inv    hash  account, quantity, available, reserved, sold, gen, price, currency, title,
--                label (the sku a purchase line shows: the deal's sku, or its id),
--                max_per_purchase, max_per_user (0 = none), starts, ends (the sale window, ms;
--                0 = open), offer_ms (how long a waitlist offer holds), expired (count)
--   holds  zset  purchase token -> instant the hold ends (ms since epoch)
--   units  hash  purchase token -> units held
--   users  hash  user_id -> units in fulfilled purchases (kept only when max_per_user > 0)
--   waiting list  "entry_id|user_id" of the customers waiting for units, first first
--   offers  hash  purchase token -> waitlist entry id, for holds offered to a waiting customer
--   offered list  "offer|entry_id|token|ends_ms|user_id|price|currency" of offers made here that
--                SQL does not know yet: app/inventory/waitlist.py records them and trims the list
--   holders hash purchase token -> user_id, for holds reserved for a customer
--   holding hash user_id -> units in that customer's holds (counted against max_per_user)
--   marks  hash  purchase token -> "units|user|from_hold|ends_ms|holder": units a claim or a direct
--                purchase turned into sold units, whose SQL commit may not have happened yet. A
--                second run with the token finds them instead of taking more. The worker drops
--                marks once SQL shows the purchase committed; a rebuild drops them all.
--   meta   hash  purchase token -> "nonce|born_ms": the attempt that made a hold or a mark and
--                when, until the hold ends or the mark is dropped. A retry tells an attempt
--                still running (young) from one that died (old) by it, takes over the second
--                (adopt.lua), and an undo (give_back.lua) applies only to its own attempt's take.
--   refused zset what a request's retries share -> the last instant (ms) a take for them was
--                refused: a purchase token derived from an Idempotency-Key or a v3 transaction
--                id, or a keyed claim's key token. A request named so that began at or before
--                that instant is refused too: its answer was given. Kept REFUSALS_KEPT_MS; a
--                rebuild keeps them.
-- Invariant kept by every script: available + reserved + sold == quantity, available >= 0,
-- reserved == sum of units over holds, holding[user] == sum of units over that user's holds.
--
-- Return codes (the first element of every reply: OK, SOLD_OUT, ...) are locals that
-- app/inventory/scripts.py defines before this file, from its `Code`: the numbers live there only.

-- Several fields in one string value ("a|b|c"); a field's own '|' and '%' are escaped, so a
-- customer's id may hold any character.
local function join(...)
  local parts = {}
  for i, part in ipairs({...}) do parts[i] = (tostring(part):gsub('%%', '%%25'):gsub('|', '%%7C')) end
  return table.concat(parts, '|')
end

local function split(text)
  local parts = {}
  for part in (text .. '|'):gmatch('(.-)|') do parts[#parts + 1] = (part:gsub('%%7C', '|'):gsub('%%25', '%%')) end
  return parts
end

-- A hold's units leave the holder's count (the hold ends, or becomes sold units); an offer is
-- an offer no more.
local function unhold(K, token, n)
  redis.call('HDEL', K[10], token)
  local holder = redis.call('HGET', K[7], token)
  if holder then
    redis.call('HDEL', K[7], token)
    redis.call('HINCRBY', K[8], holder, -n)
  end
  return holder or ''
end

local function hold(K, token, n, ends_at, holder)
  redis.call('ZADD', K[2], ends_at, token)
  redis.call('HSET', K[3], token, n)
  if holder ~= '' then
    redis.call('HSET', K[7], token, holder)
    redis.call('HINCRBY', K[8], holder, n)
  end
end

-- Units coming back to stock go first to the customers waiting for them, in order: each gets
-- one as a hold of its own (an offer, held offer_ms), noted for SQL in `offered`; the rest are
-- available. So a buyer who reserves at that moment never jumps the queue. Returns the offers.
local function return_units(K, n, now)
  local inv = K[1]
  local offered = 0
  while n > 0 do
    local entry = redis.call('LPOP', K[9])
    if not entry then break end
    local e = split(entry)
    local token = 'wl' .. e[1]
    local deal = redis.call('HMGET', inv, 'offer_ms', 'price', 'currency')
    local ends = now + tonumber(deal[1] or '600000')
    hold(K, token, 1, ends, e[2])
    redis.call('HSET', K[10], token, e[1])
    redis.call('HINCRBY', inv, 'reserved', 1)
    redis.call('RPUSH', K[11], join('offer', e[1], token, ends, e[2], deal[2], deal[3]))
    n = n - 1
    offered = offered + 1
  end
  redis.call('HINCRBY', inv, 'available', n)
  return offered
end

-- Return holds that ended at or before `now` to stock, at most `limit` of them.
-- Reserve and buy call it before they look at stock, so a deal's expired units come back even
-- when no worker runs; the worker's sweep calls it for deals nobody is buying.
local function reclaim(K, now, limit)
  local inv, holds, units, meta = K[1], K[2], K[3], K[6]
  local ended = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, limit)
  if #ended == 0 then
    return 0, 0
  end
  local total = 0
  for _, token in ipairs(ended) do
    local n = tonumber(redis.call('HGET', units, token) or '0')
    total = total + n
    unhold(K, token, n)
  end
  redis.call('ZREM', holds, unpack(ended))
  redis.call('HDEL', units, unpack(ended))
  redis.call('HDEL', meta, unpack(ended))
  redis.call('HINCRBY', inv, 'reserved', -total)
  redis.call('HINCRBY', inv, 'expired', #ended)
  return_units(K, total, now)
  return #ended, total
end

-- nil inside the deal's sale window, else the refusal: {NOT_STARTED, starts} | {SALE_ENDED, ends}.
local function outside_window(inv, now)
  local window = redis.call('HMGET', inv, 'starts', 'ends')
  local starts, ends = tonumber(window[1] or '0'), tonumber(window[2] or '0')
  if starts > 0 and now < starts then return {NOT_STARTED, starts} end
  if ends > 0 and now >= ends then return {SALE_ENDED, ends} end
  return nil
end

-- Earliest end among the deal's holds, or -1 when it has none.
local function next_end(holds)
  local first = redis.call('ZRANGE', holds, 0, 0, 'WITHSCORES')
  if #first == 0 then
    return -1
  end
  return tonumber(first[2])
end

-- Whether `user` may take `n` more units: their fulfilled units and their holds count against
-- the deal's cap (0: no cap).
local function over_user_limit(inv, users, holding, user, n)
  local cap = tonumber(redis.call('HGET', inv, 'max_per_user') or '0')
  if cap <= 0 or user == '' then
    return false, cap, 0
  end
  local already = tonumber(redis.call('HGET', users, user) or '0') + tonumber(redis.call('HGET', holding, user) or '0')
  return already + n > cap, cap, already
end

local function count_user(inv, users, user, n)
  if user ~= '' and tonumber(redis.call('HGET', inv, 'max_per_user') or '0') > 0 then
    redis.call('HINCRBY', users, user, n)
  end
end

local function set_meta(meta, token, nonce, now)
  redis.call('HSET', meta, token, join(nonce, now))
end

-- What `token` already has on this deal: nil, or {kind ('hold' | 'mark'), units, user, nonce,
-- born_ms, from_hold (0 | 1), ends_ms, holder}. Nonce '' and born 0 for a hold loaded from SQL.
local function found(K, token)
  local holds, units, marks, meta = K[2], K[3], K[5], K[6]
  local found_units, user, from_hold, ends, holder = redis.call('HGET', units, token), '', 1, 0, ''
  local kind = 'hold'
  if found_units then
    ends = tonumber(redis.call('ZSCORE', holds, token) or '0')
    holder = redis.call('HGET', K[7], token) or ''
    user = holder
  else
    local mark = redis.call('HGET', marks, token)
    if not mark then
      return nil
    end
    local m = split(mark)
    kind, found_units, user, from_hold, ends, holder = 'mark', m[1], m[2], tonumber(m[3]), tonumber(m[4]), m[5] or ''
  end
  local nonce, born = '', 0
  local who = redis.call('HGET', meta, token)
  if who then
    local w = split(who)
    nonce, born = w[1], tonumber(w[2])
  end
  return {kind, tonumber(found_units), user, nonce, born, from_hold, ends, holder}
end

-- The reply when a token is found: {FOUND, gen, kind, units, user, nonce, born_ms, from_hold,
-- ends_ms, available, price, currency, title, label, holder}; the deal's fields let a caller
-- that finds its own take (the same script sent twice) answer as if it had made it now.
local function found_reply(inv, gen, f)
  local deal = redis.call('HMGET', inv, 'available', 'price', 'currency', 'title', 'label')
  return {FOUND, gen, f[1], f[2], f[3], f[4], f[5], f[6], f[7],
          tonumber(deal[1]), deal[2], deal[3], deal[4], deal[5], f[8]}
end

-- How long a refusal of a shared token is remembered, and so how long a request with such a
-- token may go on taking: a request older than this is told to retry (TOO_OLD), so every
-- refusal made since it began is still here when it takes.
local REFUSALS_KEPT_MS = 120000

-- A take for the requests named `name` (a shared token, or a claim's key) was refused at
-- `now`: those that began by then (the retry that was refused, and any earlier one still
-- running) take nothing more.
local function note_refusal(refused, name, now)
  redis.call('ZADD', refused, now, name)
  redis.call('ZREMRANGEBYSCORE', refused, '-inf', '(' .. (now - REFUSALS_KEPT_MS))
end

-- For a request other requests may retry (`since` > 0: when it began; `name`: what its retries
-- share): {TOO_OLD} when it began longer ago than refusals are kept, {REFUSED} when a take for
-- `name` was refused since it began; else nil.
local function answered_since(refused, name, now, since)
  if since <= 0 then return nil end
  if now - since >= REFUSALS_KEPT_MS then return {TOO_OLD} end
  local last = redis.call('ZSCORE', refused, name)
  if last and tonumber(last) >= since then return {REFUSED} end
  return nil
end

-- What reserve and buy check, in this order, before they take `n` units from stock for `token`
-- and customer `user`: the sale window; holds that ended go back first (at most
-- `reclaim_limit`), so they count as available; the token's earlier take (FOUND); for a token
-- a retry shares (`since` > 0: when this request began), a refusal given since then (REFUSED)
-- or a request too old to know (TOO_OLD); the customer's cap; the stock. A refusal of a shared
-- token is noted. Returns the reply that ends the script, or nil and the units available.
--
-- Why REFUSED: two requests with one key (a timed-out checkout's retry while the first runs
-- on) must not get two answers. Without it, a retry refused while the first request stood
-- between giving back a stale take and taking again would answer sold_out, and the first
-- would then take and commit unheard.
local function check_take(K, gen, token, user, n, now, reclaim_limit, since)
  local inv, refused = K[1], K[12]
  local closed = outside_window(inv, now)
  if closed then return closed end

  reclaim(K, now, reclaim_limit)

  local already = found(K, token)
  if already then return found_reply(inv, gen, already) end

  local answered = answered_since(refused, token, now, since)
  if answered then return answered end

  local over, ucap, had = over_user_limit(inv, K[4], K[8], user, n)
  local available = tonumber(redis.call('HGET', inv, 'available'))
  local refusal = nil
  if over then
    refusal = {OVER_USER_LIMIT, ucap, had}
  elseif available < n then
    refusal = {SOLD_OUT, available}
  end
  if refusal and since > 0 then note_refusal(refused, token, now) end
  return refusal, available
end

