-- remove_idle_consumer: delete a consumer from the group only when it has no pending entries
-- and has been idle at least ARGV[3] ms. Checked and done in one step: DELCONSUMER on a
-- consumer that still owns entries would silently drop them from the pending list.
-- KEYS:  stream
-- ARGV:  group, consumer name, min idle ms
-- Returns 1 when removed, 0 otherwise.
local group, name = ARGV[1], ARGV[2]
local min_idle = tonumber(ARGV[3])
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group)) do
  local fields = {}
  for i = 1, #info, 2 do
    fields[info[i]] = info[i + 1]
  end
  if fields['name'] == name then
    if tonumber(fields['pending']) == 0 and tonumber(fields['idle']) >= min_idle then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, name)
      return 1
    end
    return 0
  end
end
return 0
