-- Consumer-side idempotency: claim the right to perform one side effect of one task.
-- KEYS[1] done marker of (scope, task id)
-- ARGV[1] claim token (unique per attempt)
-- ARGV[2] claim lease (ms): a claim whose holder died expires after this
-- Returns {1} when this caller claimed it, else {0, current value, pttl}:
-- value "done" means the effect already happened; anything else is another live claim.
local claimed = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if claimed then
  return {1}
end
return {0, redis.call('GET', KEYS[1]) or '', redis.call('PTTL', KEYS[1])}
