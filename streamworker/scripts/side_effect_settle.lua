-- Consumer-side idempotency: settle a claim taken by side_effect_claim.lua.
-- KEYS[1] done marker of (scope, task id)
-- ARGV[1] claim token; ARGV[2] "done" or "release"; ARGV[3] TTL (s) of the done marker
-- Only the holder of the claim settles it, so a claim that expired and was taken over by
-- another attempt is left alone. "done" is still written when the claim merely expired.
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] and not (current == false and ARGV[2] == 'done') then
  return 0
end
if ARGV[2] == 'done' then
  redis.call('SET', KEYS[1], 'done', 'EX', ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
