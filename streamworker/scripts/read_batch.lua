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
-- No start gate here: on a single Redis a cancel deletes a task's entry while it is still
-- unread, and refuses once it has been read (cancel_task.lua), so what is read may run.
local group, consumer = ARGV[1], ARGV[2]
local remaining = tonumber(ARGV[3])
local out, size = {}, 0  -- a count, not #out: Lua 5.1 finds a table's length by a search
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
          remaining = remaining - 1
        end
      end
    end
  end
end
return out
