-- read_batch: read up to ARGV[3] entries for one consumer across several streams, in one
-- round trip, in the order KEYS are given (highest priority first).
-- KEYS:  the streams
-- ARGV:  group, consumer, total, then for each key: quota, start id ('>' = new entries,
--        an id = this consumer's own pending entries after that id)
-- Pass 1 takes up to each stream's quota (weighted mode); pass 2 fills what is left in KEYS
-- order (strict mode gives every quota = total, so pass 1 alone is strict priority).
-- Returns a flat list: key index (1-based), entry id, field list ({} when the entry was
-- deleted while pending), delivery count, repeated. New entries are on their first
-- delivery; re-read pending entries get their count from XPENDING (re-reading increments
-- it), so a poison entry that kills its worker on every restart is still caught.
--
-- Optional start gate (begin_batch.lua's rule, in the same round trip; single Redis only, as
-- the keys it touches are named by the entries): after the per-key pairs, ARGV holds
-- started_at, the status key prefix, the cancel marker prefix and each key's priority. Then
-- every entry gets a fifth value: 1 its task was cancelled (do not run it), 0 passed (marked
-- running unless it has no task_id), 2 not gated here (it names a scheduled_for time, which
-- the worker checks before it marks anything running).
local group, consumer = ARGV[1], ARGV[2]
local remaining = tonumber(ARGV[3])
local out, size = {}, 0  -- a count, not #out: Lua 5.1 finds a table's length by a search
local extra = 4 + 2 * #KEYS
local started_at = ARGV[extra]
local status_prefix, cancel_prefix = ARGV[extra + 1], ARGV[extra + 2]

local function gate(i, fields)
  -- One pass over the names, keeping the last value of each (as a table would), without
  -- building a table per entry.
  local task_id, scheduled, retry_count, task_type, created_at
  for j = 1, #fields, 2 do
    local name = fields[j]
    if name == 'task_id' then
      task_id = fields[j + 1]
    elseif name == 'task_type' then
      task_type = fields[j + 1]
    elseif name == 'created_at' then
      created_at = fields[j + 1]
    elseif name == 'retry_count' then
      retry_count = fields[j + 1]
    elseif name == 'scheduled_for' then
      scheduled = true
    end
  end
  if not task_id or task_id == '' then
    return 0  -- not published through us, so it cannot have been cancelled
  end
  if scheduled then
    return 2
  end
  local key = status_prefix .. task_id
  -- The status says whether the task was cancelled (the cancel script writes it and the
  -- marker together); only without a status hash (never tracked, or expired while a
  -- scheduled task waited) is the marker itself looked up.
  local state = redis.call('HGET', key, 'status')
  if state == 'cancelled' then
    return 1
  end
  if state then
    redis.call('HSET', key, 'status', 'running', 'started_at', started_at)
    if state == 'completed' or state == 'failed' then
      -- A terminal state's TTL must go (a repeated delivery); the other states have none.
      redis.call('PERSIST', key)
    end
    return 0
  end
  if redis.call('EXISTS', cancel_prefix .. task_id) == 1 then
    return 1
  end
  if not retry_count or retry_count == '' then
    retry_count = '0'
  end
  local row = {'status', 'running', 'started_at', started_at, 'task_id', task_id,
    'priority', ARGV[extra + 2 + i], 'retry_count', string.sub(retry_count, 1, 200)}
  if task_type and task_type ~= '' then
    row[#row + 1] = 'task_type'
    row[#row + 1] = string.sub(task_type, 1, 200)
  end
  if created_at and created_at ~= '' then
    row[#row + 1] = 'created_at'
    row[#row + 1] = string.sub(created_at, 1, 200)
  end
  redis.call('HSET', key, unpack(row))
  return 0
end
for pass = 1, 2 do
  for i, key in ipairs(KEYS) do
    if remaining <= 0 then return out end
    local start = ARGV[3 + 2 * i]
    local want = remaining
    if pass == 1 then
      want = math.min(remaining, tonumber(ARGV[2 + 2 * i]))
    elseif start ~= '>' then
      want = 0  -- a pending-list walk: pass 1 already took what there is after the cursor
    end
    if want > 0 then
      local res = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want,
        'STREAMS', key, start)
      if res then
        local entries = res[1][2]
        local counts = {}
        if start ~= '>' and #entries > 0 then
          local pending = redis.call('XPENDING', key, group, entries[1][1],
            entries[#entries][1], #entries, consumer)
          for _, p in ipairs(pending) do
            counts[p[1]] = p[4]
          end
        end
        for _, entry in ipairs(entries) do
          local id, fields = entry[1], entry[2] or {}
          out[size + 1] = i
          out[size + 2] = id
          out[size + 3] = fields
          out[size + 4] = counts[id] or 1
          size = size + 4
          if started_at then
            size = size + 1
            out[size] = gate(i, fields)
          end
          remaining = remaining - 1
        end
      end
    end
  end
end
return out
