-- publish_batch: add a batch of entries to one priority stream in one call, so a batch costs
-- the publisher one reply instead of one per task.
-- KEYS:  stream
-- ARGV:  MessagePack array of entries, each a flat {field, value, ...} array of strings;
--        optionally the status key prefix (single Redis only, as the status keys are named by
--        the entries): then each task's first status ('queued') is written before its entry,
--        from the entry's own fields (CONTRACT.md §5). The producer puts those fields first,
--        in this order: task_id, task_type, payload, priority, created_at, retry_count, then
--        scheduled_for when there is one (read by position: a loop over the names cost Redis
--        a quarter more per task).
-- Returns the number of entries added.
local entries = cmsgpack.unpack(ARGV[1])
local status_prefix = ARGV[2]
for i = 1, #entries do
  local e = entries[i]
  if status_prefix then
    local key = status_prefix .. e[2]
    local new
    if e[13] == 'scheduled_for' then
      new = redis.call('HSET', key, 'status', 'queued', 'task_id', e[2], 'task_type', e[4],
        'priority', e[8], 'created_at', e[10], 'retry_count', '0', 'scheduled_for', e[14]) == 7
    else
      new = redis.call('HSET', key, 'status', 'queued', 'task_id', e[2], 'task_type', e[4],
        'priority', e[8], 'created_at', e[10], 'retry_count', '0') == 6
    end
    if not new then
      -- the id named an older task, whose hash may hold a terminal state's TTL
      redis.call('PERSIST', key)
    end
  end
  redis.call('XADD', KEYS[1], '*', unpack(e))
end
return #entries
