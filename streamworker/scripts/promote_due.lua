-- promote_due: move parked entries whose time has come from the delayed set to their stream.
-- Running inside one script makes ZRANGE + XADD + ZREM atomic, so any number of workers can
-- promote at once and each entry is added exactly once.
-- KEYS:  delayed set, stream
-- ARGV:  now (ms), max entries to move; optionally (single Redis, where the status keys a task
--        names can be reached from here) the status key prefix and the cancel marker prefix
-- With the prefixes, a task cancelled while it waited (its status says 'cancelled', or,
-- once that hash has expired, its cancel marker exists) is dropped instead of moved, and a
-- 'scheduled' task becomes 'queued' with its new entry's place ('stream', 'entry_id'), where
-- a later cancel finds it (cancel_task.lua). Check and move are one step, so a cancel lands
-- either before (dropped here) or after (it finds the entry). A retry's status ('retrying')
-- is left as it is: a retry cannot be cancelled.
-- Returns the number of entries taken off the delayed set (moved or dropped).
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
local status_prefix, cancel_prefix = ARGV[3], ARGV[4]
for _, member in ipairs(due) do
  local fields = cmsgpack.unpack(member)
  local key, state, cancelled
  if status_prefix then
    local task_id
    for j = 1, #fields, 2 do
      if fields[j] == 'task_id' then
        task_id = fields[j + 1]
      end
    end
    if task_id and task_id ~= '' then
      key = status_prefix .. task_id
      state = redis.call('HGET', key, 'status')
      cancelled = state == 'cancelled'
        or (not state and redis.call('EXISTS', cancel_prefix .. task_id) == 1)
    end
  end
  if not cancelled then
    local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
    if state == 'scheduled' then
      redis.call('HSET', key, 'status', 'queued', 'stream', KEYS[2], 'entry_id', id)
    end
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
