-- Undo a take whose SQL write certainly did not happen: the hold or the mark of `token`, but only
-- while `nonce` (the attempt that took it) still owns it. Safe to run twice, or after another
-- attempt adopted the take: those runs find nothing of `nonce`'s and change nothing.
-- A mark made from a hold puts the hold back (for its customer) while it has time left;
-- otherwise its units go back to stock.
-- KEYS: the deal's keys (lib.lua)
-- ARGV: token, nonce, now_ms
-- Reply: {OK, units, restored_hold_ends_ms (-1 when none)} | {NOT_OWNER}
local K = KEYS
local inv, holds, units, users, marks, meta, holding = K[1], K[2], K[3], K[4], K[5], K[6], K[8]
local token, nonce, now = ARGV[1], ARGV[2], tonumber(ARGV[3])

local f = found(K, token)
if nonce == '' or not f or f[4] ~= nonce then return {NOT_OWNER} end
local n = f[2]
redis.call('HDEL', meta, token)
if f[1] == 'hold' then
  redis.call('ZREM', holds, token)
  redis.call('HDEL', units, token)
  unhold(K, token, n)
  redis.call('HINCRBY', inv, 'reserved', -n)
  return_units(K, n, now)
  return {OK, n, -1}
end
redis.call('HDEL', marks, token)
redis.call('HINCRBY', inv, 'sold', -n)
count_user(inv, users, f[3], -n)
if f[6] == 1 and f[7] > now then
  hold(K, token, n, f[7], f[8])
  redis.call('HINCRBY', inv, 'reserved', n)
  return {OK, n, f[7]}
end
return_units(K, n, now)
return {OK, n, -1}
