-- Undo a buy whose SQL write did not happen (for example a later product of the same v3
-- purchase was sold out). Applies only to the state the buy ran against: after a rebuild from
-- SQL the buy is not counted anyway.
-- KEYS: inv, users
-- ARGV: gen, units, user_id ('' for none)
-- Reply: {OK} | {STALE}
local inv, users = KEYS[1], KEYS[2]
local n, user = tonumber(ARGV[2]), ARGV[3]
if redis.call('HGET', inv, 'gen') ~= ARGV[1] then return {STALE} end
redis.call('HINCRBY', inv, 'available', n)
redis.call('HINCRBY', inv, 'sold', -n)
count_user(inv, users, user, -n)
return {OK}
