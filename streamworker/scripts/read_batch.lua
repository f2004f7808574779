-- read_batch: read up to ARGV[3] entries for one consumer across several streams, in one
-- round trip, in the order KEYS are given (highest priority first).
-- KEYS:  the streams
-- ARGV:  group, consumer, total, then for each key: quota, start id ('>' = new entries,
--        an id = this consumer's own pending entries after that id)
-- Pass 1 takes up to each stream's quota (weighted mode); pass 2 fills what is left in KEYS
-- order (strict mode gives every quota = total, so pass 1 alone is strict priority).
-- Returns a flat list: key index (1-based), entry id, field list ({} when the entry was
-- deleted while pending), repeated.
local group, consumer = ARGV[1], ARGV[2]
local remaining = tonumber(ARGV[3])
local out = {}
for pass = 1, 2 do
  for i, key in ipairs(KEYS) do
    if remaining <= 0 then return out end
    local want = remaining
    if pass == 1 then
      want = math.min(remaining, tonumber(ARGV[2 + 2 * i]))
    elseif ARGV[3 + 2 * i] ~= '>' then
      want = 0  -- a pending-list walk: pass 1 already took what there is after the cursor
    end
    if want > 0 then
      local res = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want,
        'STREAMS', key, ARGV[3 + 2 * i])
      if res then
        for _, entry in ipairs(res[1][2]) do
          out[#out + 1] = i
          out[#out + 1] = entry[1]
          out[#out + 1] = entry[2] or {}
          remaining = remaining - 1
        end
      end
    end
  end
end
return out
