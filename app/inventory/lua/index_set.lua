-- The sweeper's compare-and-set on the sweep index: move deal `member` from score `seen` to
-- `next` (or drop it when `next` is -1), unless someone changed its score in between.
-- KEYS: sweep_index
-- ARGV: member, seen_score, next_score
-- Reply: 1 when changed, 0 when the score had moved
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not current or tonumber(current) ~= tonumber(ARGV[2]) then return 0 end
if tonumber(ARGV[3]) < 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
