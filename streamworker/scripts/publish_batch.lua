-- publish_batch: add a batch of entries to one priority stream in one call, so a batch costs
-- the publisher one reply instead of one per task.
-- KEYS:  stream
-- ARGV:  MessagePack array of entries, each a flat {field, value, ...} array of strings
-- Returns the number of entries added.
local entries = cmsgpack.unpack(ARGV[1])
for i = 1, #entries do
  redis.call('XADD', KEYS[1], '*', unpack(entries[i]))
end
return #entries
