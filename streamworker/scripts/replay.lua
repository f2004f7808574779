-- replay: put one dead letter back on the stream it came from and remove it from the
-- dead-letter stream, as one step: a crash mid-replay leaves the entry either still dead or
-- queued again, never lost and never both.
-- KEYS:  dead-letter stream, the priority stream to replay to
-- ARGV:  dead-letter entry id; optionally (single Redis, where a task's status key can be
--        reached from here) the status key prefix and the stream's priority
-- The entry's own 'source_stream' must name KEYS[2]. The caller only ever passes one of the
-- known priority streams there, so an entry whose source is unknown cannot be replayed.
-- The re-added entry keeps the original fields, without the dead-letter fields (dlq_*) and
-- the provenance ones, with retry_count = 0 and replayed_from = the dead-letter id.
-- With the prefix, a task's status goes back to 'queued' in the same step, with the new
-- entry's place ('stream', 'entry_id': a cancel deletes it from there while it is unread),
-- without the failed run's started_at and completed_at (last_error stays as history).
-- Returns {'replayed', new entry id, task id or ''}, {'gone'} when the entry is not in the
-- dead-letter stream, or {'mismatch', its source_stream or ''}; nothing changes unless
-- 'replayed'.
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return {'gone'}
end
local raw = found[1][2]
local dropped = {
  source_stream = true, source_id = true, group = true, consumer = true,
  deliveries = true, failed_at = true, retry_count = true, replayed_from = true,
}
local source, task_id, task_type = '', '', nil
local fields = {}
for i = 1, #raw, 2 do
  local name, value = raw[i], raw[i + 1]
  if name == 'source_stream' then
    source = value
  elseif name == 'task_id' then
    task_id = value
  elseif name == 'task_type' then
    task_type = value
  end
  if not dropped[name] and string.sub(name, 1, 4) ~= 'dlq_' then
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
end
if source ~= KEYS[2] then
  return {'mismatch', source}
end
fields[#fields + 1] = 'retry_count'
fields[#fields + 1] = '0'
fields[#fields + 1] = 'replayed_from'
fields[#fields + 1] = ARGV[1]
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XDEL', KEYS[1], ARGV[1])
if ARGV[2] and task_id ~= '' then
  local key = ARGV[2] .. task_id
  redis.call('HDEL', key, 'started_at', 'completed_at')
  redis.call('HSET', key, 'status', 'queued', 'task_id', task_id, 'priority', ARGV[3],
    'retry_count', '0', 'stream', KEYS[2], 'entry_id', id)
  if task_type then
    redis.call('HSET', key, 'task_type', string.sub(task_type, 1, 200))
  end
  redis.call('PERSIST', key)
end
return {'replayed', id, task_id}
