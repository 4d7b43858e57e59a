-- Whether `token` has a hold or a mark on the deal (1) or neither (0). Reads only. The sold-out
-- memo may refuse a write whose token an earlier attempt could hold only when it has neither:
-- otherwise that attempt may hold the very unit that sold the deal out (LiveStock.refuse_from_memory).
-- KEYS: the deal's keys (lib.lua)
-- ARGV: token
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then
  return 1
end
return 0
