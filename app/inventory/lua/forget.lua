-- Drop the marks (and their attempt's meta) of purchases SQL shows committed: their retries
-- stop at SQL now. Running it twice changes nothing more.
-- KEYS: the deal's keys (lib.lua)
-- ARGV: token, ...
-- Reply: {OK, marks_dropped}
local marks, meta = KEYS[5], KEYS[6]
local dropped = 0
for _, token in ipairs(ARGV) do
  if redis.call('HDEL', marks, token) == 1 then
    dropped = dropped + 1
    redis.call('HDEL', meta, token)
  end
end
return {OK, dropped}
