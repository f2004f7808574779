-- audit_append: append a batch of audit events to the bounded audit stream in one call.
-- One command for a whole batch keeps the client's cost per event to encoding one argument
-- (a pipeline of XADDs costs far more per event in redis-py), off the task hot path anyway.
-- KEYS:  audit stream
-- ARGV:  approximate max length, then one JSON document per event
-- Returns the number of events appended.
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i])
end
return #ARGV - 1
