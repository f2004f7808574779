-- audit_append: append a batch of audit events to the bounded audit stream in one call.
-- One command with one argument for a whole batch keeps the client's cost per event to
-- encoding its document (a pipeline of XADDs, or one argument per event, costs far more per
-- event in redis-py), off the task hot path anyway.
-- KEYS:  audit stream
-- ARGV:  approximate max length, the events' JSON documents as newline-delimited JSON (one
--        document per line; JSON text never holds a raw newline)
-- The stream is trimmed once per batch rather than by each XADD (about a tenth of Redis's
-- time per event); the cap stays approximate either way.
-- Returns the number of events appended.
local count = 0
for document in string.gmatch(ARGV[2], '[^\n]+') do
  redis.call('XADD', KEYS[1], '*', 'event', document)
  count = count + 1
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[1])
return count
