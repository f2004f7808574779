-- scheduler_advance: record a schedule's progress, fenced by the leader lease: only the
-- holder of the current term writes, and the cursor only moves forward, so a paused old
-- leader that wakes up can neither rewind a schedule nor overwrite its newer state.
-- KEYS:  leader key, scheduler state hash
-- ARGV:  lease value ("token:holder"), cursor field, cursor (epoch s), then field/value pairs
-- Returns 1 when written, 0 when the lease is not ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
if tonumber(ARGV[3]) > current then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
