-- Push a live hold's end out to `ends_at` (never earlier than it already is). Running it twice
-- changes nothing more: the end is absolute.
-- KEYS: the deal's keys (lib.lua)
-- ARGV: token, now_ms, ends_at_ms
-- Reply: {OK, gen, ends_at_ms} | {NOT_HELD} | {NOT_LOADED}
local inv, holds = KEYS[1], KEYS[2]
local token, now, ends_at = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local gen = redis.call('HGET', inv, 'gen')
if not gen then return {NOT_LOADED} end
local current = redis.call('ZSCORE', holds, token)
if not current or tonumber(current) <= now then return {NOT_HELD} end
if ends_at > tonumber(current) then
  redis.call('ZADD', holds, 'XX', ends_at, token)
  return {OK, gen, ends_at}
end
return {OK, gen, tonumber(current)}
