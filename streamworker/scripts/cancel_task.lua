-- cancel_task: cancel a task only while it has not started; check and write are one step,
-- so a worker's status write cannot slip between them.
-- KEYS:  status hash, cancel marker
-- ARGV:  status retention (s), marker ttl (s: retention, plus the time until a scheduled task
--        is due), time of the cancel (RFC 3339)
-- Returns {outcome, state}: outcome is 'cancelled' (now), 'already' (was cancelled before),
-- 'conflict' (state is past queued/scheduled) or 'unknown' (no status: never seen or expired).
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
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'completed_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
-- The worker looks for this marker before it starts an entry and skips the entry if present.
redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[2]))
return {'cancelled', 'cancelled'}
