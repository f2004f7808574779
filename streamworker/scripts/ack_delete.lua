-- ack_delete: acknowledge finished entries of one stream and remove them (CONTRACT.md §3:
-- acknowledged entries are removed; an unread or pending entry never is).
-- KEYS:  the stream
-- ARGV:  group, then the entry ids
-- Every entry below the group's first pending one is acknowledged (it was delivered, since
-- the worker creates its group at id 0 and the group reads in order, and it is no longer
-- pending), so it goes by an exact XTRIM MINID, which drops whole nodes; with nothing
-- pending, everything up to the group's last delivered id is acknowledged. Only the ids at or
-- above that floor (finished while an older entry is still running) need an XDEL each: XDEL
-- walks an entry's node to find it, which cost Redis 1.3 us an id (as much for an id already
-- gone), against 0.8 for this whole script, XACK included (measured alone, batches of 100).
-- Returns the number of entries acknowledged.
local stream, group = KEYS[1], ARGV[1]
local n = #ARGV
local acked = redis.call('XACK', stream, group, unpack(ARGV, 2, n))
-- The floor: the first pending id, or with nothing pending the last delivered one.
local floor, pending
local first = redis.pcall('XPENDING', stream, group, '-', '+', 1)
if first['err'] then
  -- No such stream or group any more (deleted under the worker): there is no floor.
elseif first[1] then
  floor, pending = first[1][1], true
else
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    for j = 1, #info, 2 do
      if info[j] == 'name' and info[j + 1] ~= group then
        break
      elseif info[j] == 'last-delivered-id' then
        floor = info[j + 1]
      end
    end
  end
end
if not floor then
  redis.call('XDEL', stream, unpack(ARGV, 2, n))  -- delete what was named
  return acked
end
redis.call('XTRIM', stream, 'MINID', floor)
if not pending then
  redis.call('XDEL', stream, floor)  -- acknowledged too, and every other id was below it
  return acked
end
-- Stream ids are "ms-seq" with both parts integers (no leading zeros); those below the
-- floor are gone now. Compared as text, which costs Redis less than tonumber: a longer
-- number is the larger one, and numbers of one length compare as their digits do.
local find, sub = string.find, string.sub
local floor_dash = find(floor, '-', 1, true)
local floor_ms, floor_seq = sub(floor, 1, floor_dash - 1), sub(floor, floor_dash + 1)
local above = {}
for i = 2, n do
  local id = ARGV[i]
  local dash = find(id, '-', 1, true)
  local keep
  if dash ~= floor_dash then
    keep = dash > floor_dash
  else
    local ms = sub(id, 1, dash - 1)
    if ms ~= floor_ms then
      keep = ms > floor_ms
    else
      local seq = sub(id, dash + 1)
      if #seq ~= #floor_seq then
        keep = #seq > #floor_seq
      else
        keep = seq >= floor_seq
      end
    end
  end
  if keep then
    above[#above + 1] = id
  end
end
if #above > 0 then
  redis.call('XDEL', stream, unpack(above))
end
return acked
