-- publish_batch: add a batch of entries to one priority stream in one call, so a batch costs
-- the publisher one reply instead of one per task.
-- KEYS:  stream
-- ARGV:  MessagePack array of entries, each a flat {field, value, ...} array of strings;
--        optionally the status key prefix and the stream's priority (single Redis only, as the
--        status keys are named by the entries): then each task's first status ('queued') is
--        written with its entry, from the entry's own fields and the priority (CONTRACT.md
--        §5), along with where the entry is ('stream', 'entry_id'): a cancel deletes the
--        entry from there while it is unread (cancel_task.lua). The status holds no task_id
--        (its key names it) and no retry_count (absent is 0).
-- The producer puts those fields first, in this order: task_id, task_type, payload,
-- created_at, then scheduled_for when there is one (it writes no priority, which the stream
-- says, and no retry_count, absent on a first publish). They are read by
-- position when the names are where expected (a loop over the names cost Redis a quarter
-- more per task), else by name (a producer hook may have rebuilt the fields).
-- Returns the number of entries added.
local entries = cmsgpack.unpack(ARGV[1])
local status_prefix = ARGV[2]
local priority = ARGV[3]
local kept = {task_type = true, created_at = true, scheduled_for = true}

-- The first status of entry e, added as id, written to key; returns whether the hash is new.
-- Without task_id (the key names it) and retry_count (absent is 0): two fields fewer in every
-- status kept for its retention, which the entry's place (stream, entry_id) about pays for.
local function write_status(key, e, id)
  if e[1] == 'task_id' and e[3] == 'task_type' and e[7] == 'created_at' then
    if e[9] == 'scheduled_for' then
      return redis.call('HSET', key, 'status', 'queued', 'task_type', e[4], 'priority', priority,
        'created_at', e[8], 'scheduled_for', e[10], 'stream', KEYS[1], 'entry_id', id) == 7
    end
    return redis.call('HSET', key, 'status', 'queued', 'task_type', e[4], 'priority', priority,
      'created_at', e[8], 'stream', KEYS[1], 'entry_id', id) == 6
  end
  local row = {'status', 'queued', 'priority', priority, 'stream', KEYS[1], 'entry_id', id}
  for j = 1, #e, 2 do
    if kept[e[j]] then
      row[#row + 1] = e[j]
      row[#row + 1] = e[j + 1]
    end
  end
  return redis.call('HSET', key, unpack(row)) == #row / 2
end

local function task_id_of(e)
  if e[1] == 'task_id' then
    return e[2]
  end
  for j = 1, #e, 2 do
    if e[j] == 'task_id' then
      return e[j + 1]
    end
  end
end

for i = 1, #entries do
  local e = entries[i]
  local id = redis.call('XADD', KEYS[1], '*', unpack(e))
  if status_prefix then
    local key = status_prefix .. task_id_of(e)
    if not write_status(key, e, id) then
      -- The id named an older task: its hash may hold a terminal state's TTL, a retry count
      -- and the times and error of its run, none of which describe this task.
      redis.call('PERSIST', key)
      redis.call('HDEL', key, 'retry_count', 'started_at', 'completed_at', 'last_error')
    end
  end
end
return #entries
