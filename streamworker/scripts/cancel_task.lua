-- cancel_task: cancel a task only while it has not started; check and write are one step,
-- so no read of the entry by a worker can slip between them.
-- KEYS:  status hash, cancel marker
-- ARGV:  status retention (s), marker ttl (s: retention, plus the time until a scheduled task
--        is due), time of the cancel (RFC 3339), and on a single Redis the consumer group
-- Returns {outcome, state}: outcome is 'cancelled' (now), 'already' (was cancelled before),
-- 'conflict' (too late: state says where the task is) or 'unknown' (no status: never seen
-- or expired).
--
-- A 'scheduled' task waits in its delayed set: it is marked cancelled, with the marker for
-- when the status has expired by the time it is due, and promote_due.lua drops it instead of
-- moving it to its stream.
-- A 'queued' task on a single Redis (group given): its status names its entry ('stream',
-- 'entry_id'). Still unread by the group, the entry is deleted here, so no worker can ever
-- read it; once read (pending), the task has started: 'conflict', 'running'. The worker
-- reads without a start gate, so this is what keeps a cancelled task from running.
-- On Redis Cluster (no group) the entry may live in another slot: the status and the marker
-- are what the worker's start gate (begin_batch.lua) checks before it runs a task.
local state = redis.call('HGET', KEYS[1], 'status')
if not state then
  return {'unknown', ''}
end
if state == 'cancelled' then
  return {'already', state}
end
if state ~= 'queued' and state ~= 'scheduled' then
  return {'conflict', state}
end
local group = ARGV[4]
if group and state == 'queued' then
  local place = redis.call('HMGET', KEYS[1], 'stream', 'entry_id')
  local stream, id = place[1], place[2]
  if not stream or not id then
    -- Published by a version that did not record the entry's place: whether it has been
    -- read cannot be told, so it is not cancelled.
    return {'conflict', 'queued'}
  end
  local pending = redis.pcall('XPENDING', stream, group, id, id, 1)
  if type(pending) == 'table' and pending[1] then
    return {'conflict', 'running'}  -- read by a worker: it has started
  end
  if redis.call('XDEL', stream, id) == 0 then
    -- Gone: read and finished (its final status is on its way), or removed by hand.
    return {'conflict', 'running'}
  end
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'completed_at', ARGV[3])
  redis.call('HDEL', KEYS[1], 'stream', 'entry_id')
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
  return {'cancelled', 'cancelled'}
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'completed_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
-- promote_due.lua (single Redis) and the start gate (cluster) look for this marker when the
-- status has expired.
redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[2]))
return {'cancelled', 'cancelled'}
