-- retry: acknowledge a delivered entry and park its next attempt in the delayed set, as one
-- step, so a crash can neither lose the task nor leave it both pending and parked.
-- KEYS:  stream, delayed set
-- ARGV:  group, entry id, due time (ms), packed fields of the next attempt
-- Returns 1, or 0 when the entry was no longer pending (someone else settled it: do nothing).
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
