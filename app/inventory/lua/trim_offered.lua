-- Forget the offers SQL now knows: the first items of `offered`, if they are still the ones the
-- caller recorded (two recorders at once: the second one's trim finds other items and leaves
-- them). Safe to run twice for the same reason.
-- KEYS: the deal's keys (lib.lua)
-- ARGV: item, ... (as read, in order)
-- Reply: {OK, trimmed}
local first = redis.call('LRANGE', KEYS[11], 0, #ARGV - 1)
if #first ~= #ARGV then return {OK, 0} end
for i, item in ipairs(ARGV) do
  if first[i] ~= item then return {OK, 0} end
end
redis.call('LTRIM', KEYS[11], #ARGV, -1)
return {OK, #ARGV}
