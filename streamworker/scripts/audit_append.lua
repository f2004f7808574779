-- audit_append: append batches of audit events to the bounded audit stream in one call.
-- One entry holds a batch of one worker's events: `events` is a JSON array of rows (oldest
-- first) whose values `columns` names (a row is a task run's started event, its completed
-- event, or both: see Record in audit.py), `service` and `consumer` say whose they are,
-- `count` how many events there are and `total` how many events the stream had taken in all
-- once it was added. An entry per event cost Redis several times as much per event (an XADD
-- each), and documents with their keys twice the bytes.
-- KEYS:  audit stream, its index (a list, newest first, of "<total> <count> <entry id>")
-- ARGV:  approximate cap in events, service, consumer, columns (JSON), then per entry: its
--        event count, its JSON array of rows
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
for i = 5, #ARGV, 2 do
  local n = tonumber(ARGV[i])
  total = total + n
  appended = appended + n
  local id = redis.call('XADD', stream, '*', 'total', total, 'count', n, 'service', ARGV[2],
    'consumer', ARGV[3], 'columns', ARGV[4], 'events', ARGV[i + 1])
  redis.call('LPUSH', index, total .. ' ' .. n .. ' ' .. id)
end

-- The oldest indexed entry goes while what comes after it (total less its total) is the cap
-- or more; the newest always stays (nothing comes after it). An item that does not parse
-- (not written by this script) goes too, rather than stop every append after it.
local oldest = redis.call('LINDEX', index, -1)
local upto, count, id = parse(oldest)
while not upto or total - upto >= cap do
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
