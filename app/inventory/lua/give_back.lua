-- Undo a take whose SQL write certainly did not happen: the hold or the mark of `token`, but only
-- while `nonce` (the attempt that took it) still owns it. Safe to run twice, or after another
-- attempt adopted the take: those runs find nothing of `nonce`'s and change nothing.
-- A mark made from a hold puts the hold back while it has time left; otherwise its units go
-- back to stock.
-- KEYS: inv, holds, units, users, marks, meta
-- ARGV: token, nonce, now_ms
-- Reply: {OK, units, restored_hold_ends_ms (-1 when none)} | {NOT_OWNER}
local inv, holds, units, users, marks, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local token, nonce, now = ARGV[1], ARGV[2], tonumber(ARGV[3])

local f = found(holds, units, marks, meta, token)
if nonce == '' or not f or f[4] ~= nonce then return {NOT_OWNER} end
local n = f[2]
redis.call('HDEL', meta, token)
if f[1] == 'hold' then
  redis.call('ZREM', holds, token)
  redis.call('HDEL', units, token)
  redis.call('HINCRBY', inv, 'reserved', -n)
  redis.call('HINCRBY', inv, 'available', n)
  return {OK, n, -1}
end
redis.call('HDEL', marks, token)
redis.call('HINCRBY', inv, 'sold', -n)
count_user(inv, users, f[3], -n)
if f[6] == 1 and f[7] > now then
  redis.call('ZADD', holds, f[7], token)
  redis.call('HSET', units, token, n)
  redis.call('HINCRBY', inv, 'reserved', n)
  return {OK, n, f[7]}
end
redis.call('HINCRBY', inv, 'available', n)
return {OK, n, -1}
