-- Which of the tokens have a hold or a mark on the deal: 1 or 0 for each, in order. The sold-out
-- memo refuses a write whose token an earlier attempt could hold only when it has neither
-- (otherwise that attempt may hold the very unit that sold the deal out:
-- LiveStock.refuse_from_memory); those refusals are noted as the taking scripts note theirs
-- (lib.lua check_take), so no earlier request with the token takes after them.
-- KEYS: the deal's keys (lib.lua)
-- ARGV: now_ms, then the tokens
-- Reply: {1 | 0, ...}
local now = tonumber(ARGV[1])
local found = {}
for i = 2, #ARGV do
  local token = ARGV[i]
  local held = redis.call('HEXISTS', KEYS[3], token) == 1 or redis.call('HEXISTS', KEYS[5], token) == 1
  found[i - 1] = held and 1 or 0
  if not held then note_refusal(KEYS[12], token, now) end
end
return found
