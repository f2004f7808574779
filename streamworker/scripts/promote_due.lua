-- promote_due: move parked entries whose time has come from the delayed set to their stream.
-- Running inside one script makes ZRANGE + XADD + ZREM atomic, so any number of workers can
-- promote at once and each entry is added exactly once.
-- KEYS:  delayed set, stream
-- ARGV:  now (ms), max entries to move
-- Returns the number moved.
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(cmsgpack.unpack(member)))
  redis.call('ZREM', KEYS[1], member)
end
return #due
