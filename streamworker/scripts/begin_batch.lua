-- begin_batch: the gate between reading entries and running them. Per task: if its status
-- is 'cancelled' (or, without a status, its cancel marker exists), report it cancelled (it
-- will be acknowledged without running); otherwise mark its status 'running'. Check and
-- write are one step, so a cancel either lands before (the task is skipped) or finds the
-- task 'running' and is refused — never "cancelled" for a task that then runs.
-- KEYS:  cancel marker 1, status hash 1, cancel marker 2, status hash 2, ...
-- ARGV:  MessagePack array with one status row per task: {'status', 'running', 'started_at', t,
--        field, value, ...}, or {} to only check whether it was cancelled (status not
--        tracked, or not due yet). A hash that exists already holds the other fields
--        (written by the publish, a retry or a replay): only status and started_at are
--        written then.
-- Returns one flag per task: 1 cancelled, 0 go.
local rows = cmsgpack.unpack(ARGV[1])
local out = {}
for i = 1, #rows do
  -- The status says whether the task was cancelled (the cancel script writes it and the
  -- marker together); only without a status hash is the marker itself looked up.
  local key = KEYS[2 * i]
  local state = redis.call('HGET', key, 'status')
  if state == 'cancelled' or (not state and redis.call('EXISTS', KEYS[2 * i - 1]) == 1) then
    out[i] = 1
  else
    out[i] = 0
    local row = rows[i]
    if #row > 0 then
      if state then
        -- The hash holds the other fields (written by the publish, a retry or a replay).
        redis.call('HSET', key, row[1], row[2], row[3], row[4])
        if state == 'completed' or state == 'failed' then
          redis.call('PERSIST', key)  -- a terminal state's TTL (a repeated delivery)
        end
      else
        redis.call('HSET', key, unpack(row))
      end
    end
  end
end
return out
