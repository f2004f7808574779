-- publish_batch: add a batch of entries to one priority stream in one call, so a batch costs
-- the publisher one reply instead of one per task.
-- KEYS:  stream
-- ARGV:  MessagePack array of entries, each a flat {field, value, ...} array of strings;
--        optionally the status key prefix (single Redis only, as the status keys are named by
--        the entries): then each task's first status ('queued') is written before its entry,
--        from the entry's own fields (CONTRACT.md §5).
-- Returns the number of entries added.
local entries = cmsgpack.unpack(ARGV[1])
local status_prefix = ARGV[2]
local kept = {task_type = true, priority = true, created_at = true, scheduled_for = true}
for i = 1, #entries do
  local entry = entries[i]
  if status_prefix then
    local task_id
    local row = {'status', 'queued', 'task_id', '', 'retry_count', '0'}
    for j = 1, #entry, 2 do
      local name = entry[j]
      if name == 'task_id' then
        task_id = entry[j + 1]
      elseif kept[name] then
        row[#row + 1] = name
        row[#row + 1] = entry[j + 1]
      end
    end
    row[4] = task_id
    -- A new hash takes every field; fewer new fields means the id named an older task,
    -- whose hash may hold a terminal state's TTL.
    if redis.call('HSET', status_prefix .. task_id, unpack(row)) < #row / 2 then
      redis.call('PERSIST', status_prefix .. task_id)
    end
  end
  redis.call('XADD', KEYS[1], '*', unpack(entry))
end
return #entries
