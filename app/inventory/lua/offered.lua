-- The offers made on this deal that SQL does not know yet, and the generation they were made in.
-- KEYS: the deal's keys (lib.lua)
-- ARGV: (none)
-- Reply: {OK, gen, item, ...} | {NOT_LOADED}
local gen = redis.call('HGET', KEYS[1], 'gen')
if not gen then return {NOT_LOADED} end
local reply = {OK, gen}
for _, item in ipairs(redis.call('LRANGE', KEYS[11], 0, -1)) do
  reply[#reply + 1] = item
end
return reply
