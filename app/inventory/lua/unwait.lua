-- A customer leaves the deal's waitlist (nothing when they were not in it).
-- KEYS: the deal's keys (lib.lua)
-- ARGV: entry_id, user_id
-- Reply: {OK, removed}
return {OK, redis.call('LREM', KEYS[9], 0, join(ARGV[1], ARGV[2]))}
