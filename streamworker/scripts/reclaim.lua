-- reclaim: take over entries of one stream that have been pending (unacknowledged) longer
-- than the visibility timeout — their consumer died or lost its connection.
-- KEYS:  stream
-- ARGV:  group, consumer, min idle ms, cursor, count
-- Returns {next cursor, {id, fields, delivery count, ...}, number of deleted ids}.
-- XAUTOCLAIM walks the pending list from the cursor and increments each claimed entry's
-- delivery count; the count comes back with the entry so the caller can dead-letter one that
-- has been delivered too often (max_deliveries_exceeded) instead of running it again.
-- Pending ids whose stream entry was deleted are dropped from the pending list by Redis 7
-- itself and only counted here.
local group, consumer = ARGV[1], ARGV[2]
local res = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, ARGV[3], ARGV[4],
  'COUNT', ARGV[5])
local out = {}
for _, entry in ipairs(res[2]) do
  local id = entry[1]
  local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer)
  out[#out + 1] = id
  out[#out + 1] = entry[2] or {}
  out[#out + 1] = (pending[1] and pending[1][4]) or 1
end
local deleted = 0
if res[3] then
  deleted = #res[3]
end
return {res[1], out, deleted}
