-- audit_append: append a batch of audit events to the bounded audit stream in one call.
-- One command for a whole batch keeps the client's cost per event to encoding its document
-- and packing one argument (a pipeline of XADDs costs far more per event in redis-py), off
-- the task hot path anyway.
-- KEYS:  audit stream
-- ARGV:  approximate max length, then one JSON document per event
-- One argument per event rather than one newline-delimited argument split here: matching
-- the lines in Lua cost Redis more than the XADDs themselves (2.3 against 1.4 us an event).
-- The stream is trimmed once per batch rather than by each XADD (about a tenth of Redis's
-- time per event); the cap stays approximate either way.
-- Returns the number of events appended.
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'event', ARGV[i])
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[1])
return #ARGV - 1
