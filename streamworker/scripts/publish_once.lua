-- publish_once: publish unless the idempotency key was already used; the check and the write
-- are one step, so two racing publishers with the same key enqueue once.
-- KEYS:  idempotency key, stream, delayed set, status hash
-- ARGV:  task id, key ttl (s), due time (ms, 0 = now), packed fields, packed status row
--        (MessagePack {field, value, ...}, or '' when status is not tracked)
-- The first status is written here too, in the same step as the entry: written afterwards,
-- a fast worker could already have moved the task on, and the late 'queued' would overwrite
-- it. A task added to its stream has its entry's place in the status ('stream',
-- 'entry_id'): a cancel deletes the entry from there while it is unread (cancel_task.lua).
-- Returns {task id, 1 if published now | 0 if it was a repeat}.
local existing = redis.call('GET', KEYS[1])
if existing then
  return {existing, 0}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
local id
if tonumber(ARGV[3]) > 0 then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
else
  id = redis.call('XADD', KEYS[2], '*', unpack(cmsgpack.unpack(ARGV[4])))
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[4], unpack(cmsgpack.unpack(ARGV[5])))
  if id then
    redis.call('HSET', KEYS[4], 'stream', KEYS[2], 'entry_id', id)
  end
  redis.call('PERSIST', KEYS[4])
end
return {ARGV[1], 1}
