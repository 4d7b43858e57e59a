-- Which of the tokens (ARGV) have a hold or a mark on the deal: 1 or 0 for each, in order.
-- Reads only. The sold-out memo may refuse a write whose token an earlier attempt could hold
-- only when it has neither: otherwise that attempt may hold the very unit that sold the deal
-- out (LiveStock.refuse_from_memory).
-- KEYS: the deal's keys (lib.lua)
-- ARGV: tokens
local found = {}
for i, token in ipairs(ARGV) do
  local held = redis.call('HEXISTS', KEYS[3], token) == 1 or redis.call('HEXISTS', KEYS[5], token) == 1
  found[i] = held and 1 or 0
end
return found
