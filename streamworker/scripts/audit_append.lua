-- audit_append: append a batch of audit events to the bounded audit stream in one call.
-- One command with one argument for a whole batch keeps the client's cost per event to
-- encoding its document (a pipeline of XADDs, or one argument per event, costs far more per
-- event in redis-py), off the task hot path anyway.
-- KEYS:  audit stream
-- ARGV:  approximate max length, MessagePack array of JSON documents (strings), one per event
-- Returns the number of events appended.
local documents = cmsgpack.unpack(ARGV[2])
for i = 1, #documents do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', documents[i])
end
return #documents
