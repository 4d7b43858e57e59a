-- Take over the hold or the mark of `token` from the attempt that made it (it died, or it is
-- too slow to wait for), so that its undo (give_back.lua, by its nonce) no longer applies and
-- the adopting attempt commits it instead.
-- KEYS: the deal's keys (lib.lua)
-- ARGV: token, expected_nonce, nonce, now_ms, user (the adopter's customer; '' for any)
-- Reply: {OK} | {NOT_HELD} (nothing left to adopt) | {NOT_OWNER} (another attempt adopted it
--        first) | {OTHER_USER} (a mark of another customer's)
local K = KEYS
local token, expected, nonce, now, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local f = found(K, token)
if not f then return {NOT_HELD} end
if f[4] == nonce then return {OK} end  -- this very call, sent twice
-- A take without an attempt is one loaded from SQL: committed, nobody's to adopt.
if f[4] ~= expected or expected == '' then return {NOT_OWNER} end
-- A mark stays its customer's: the attempt that made it may be only slow and commit it after
-- all, and the deal's per-customer counts must name whom SQL will name.
if f[1] == 'mark' and user ~= '' and user ~= f[3] then return {OTHER_USER} end
set_meta(K[6], token, nonce, now)
return {OK}
