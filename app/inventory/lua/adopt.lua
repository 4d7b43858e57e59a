-- Take over the hold or the mark of `token` from the attempt that made it (it died, or it is
-- too slow to wait for), so that its undo (give_back.lua, by its nonce) no longer applies and
-- the adopting attempt commits it instead. A mark also changes hands to `user` ('' keeps it),
-- within the deal's max_per_user.
-- KEYS: the deal's keys (lib.lua)
-- ARGV: token, expected_nonce, nonce, now_ms, user
-- Reply: {OK} | {NOT_HELD} (nothing left to adopt) | {NOT_OWNER} (another attempt adopted it
--        first) | {OVER_USER_LIMIT, cap, already}
local K = KEYS
local inv, users, marks, holding = K[1], K[4], K[5], K[8]
local token, expected, nonce, now, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local f = found(K, token)
if not f then return {NOT_HELD} end
if f[4] == nonce then return {OK} end  -- this very call, sent twice
-- A take without an attempt is one loaded from SQL: committed, nobody's to adopt.
if f[4] ~= expected or expected == '' then return {NOT_OWNER} end
if f[1] == 'mark' and user ~= '' and user ~= f[3] then
  local over, cap, had = over_user_limit(inv, users, holding, user, f[2])
  if over then return {OVER_USER_LIMIT, cap, had} end
  count_user(inv, users, f[3], -f[2])
  count_user(inv, users, user, f[2])
  redis.call('HSET', marks, token, join(f[2], user, f[6], f[7], f[8]))
end
set_meta(K[6], token, nonce, now)
return {OK}
