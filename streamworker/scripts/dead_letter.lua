-- dead_letter: move a delivered entry to the dead-letter stream and acknowledge it, as one
-- step: a crash leaves it either pending (and retried) or dead-lettered, never both.
-- KEYS:  stream, dead-letter stream
-- ARGV:  group, entry id, max dead-letter length (0 = unbounded), then field/value pairs.
--        The field 'deliveries' is filled in here from the pending entries list.
-- The cap is an exact MAXLEN (not '~'), so "at most N entries, the oldest go first" holds
-- to the entry; the length before and after tells the caller how many were trimmed, so a
-- drop is always reported, never silent.
-- Returns {dead-letter entry id, length after, entries trimmed}, or false when the entry was
-- no longer pending.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then
  return false
end
local fields = {}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
fields[#fields + 1] = 'deliveries'
fields[#fields + 1] = tostring(pending[1][4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local maxlen = tonumber(ARGV[3])
if maxlen > 0 then
  local before = redis.call('XLEN', KEYS[2])
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '=', maxlen, '*', unpack(fields))
  local after = redis.call('XLEN', KEYS[2])
  return {id, after, before + 1 - after}
end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
return {id, redis.call('XLEN', KEYS[2]), 0}
