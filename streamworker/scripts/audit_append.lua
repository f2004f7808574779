-- audit_append: append batches of audit events to the bounded audit stream in one call.
-- One entry holds a batch of events: `events` is their JSON array (oldest first), `count` how
-- many there are, `total` how many events the stream had taken in all once it was added.
-- An entry per event cost Redis several times as much per event (an XADD each) and the
-- worker a script argument per event.
-- KEYS:  audit stream, its index (a list, newest first, of "<total> <count> <entry id>")
-- ARGV:  approximate cap in events, then per entry: its event count, its JSON array
-- The cap counts events, not entries: the oldest entries go while the entries after them
-- still hold at least the cap, so the stream keeps between cap and cap + one entry's events,
-- shared by every worker that appends. The index is what makes that cheap: reading an
-- entry's own fields would copy its events into the script. Entries the index does not know
-- (an older version wrote one entry per event, without an index) go once the indexed ones
-- alone hold the cap.
-- Returns the number of events appended.
local stream, index = KEYS[1], KEYS[2]
local cap = tonumber(ARGV[1])

local function parse(item)
  local total, count, id = string.match(item, '^(%d+) (%d+) (.+)$')
  return tonumber(total), tonumber(count), id
end

local newest = redis.call('LINDEX', index, 0)
local total = newest and parse(newest) or 0
local appended = 0
for i = 2, #ARGV, 2 do
  local n = tonumber(ARGV[i])
  total = total + n
  appended = appended + n
  local id = redis.call('XADD', stream, '*', 'total', total, 'count', n, 'events', ARGV[i + 1])
  redis.call('LPUSH', index, total .. ' ' .. n .. ' ' .. id)
end

-- The oldest indexed entry goes while what comes after it (total less its total) is the cap
-- or more; the newest always stays (nothing comes after it).
local oldest = redis.call('LINDEX', index, -1)
local upto, count, id = parse(oldest)
while total - upto >= cap do
  redis.call('RPOP', index)
  oldest = redis.call('LINDEX', index, -1)
  upto, count, id = parse(oldest)
end
if total - upto + count >= cap then
  -- Everything before the oldest indexed entry goes: what the loop dropped, and any entry
  -- the index never knew.
  redis.call('XTRIM', stream, 'MINID', id)
end
return appended
