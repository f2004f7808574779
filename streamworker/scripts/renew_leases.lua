-- renew_leases: reset the idle time of entries this consumer is still running, so that no
-- other consumer's XAUTOCLAIM takes a live task over.
-- KEYS:  stream
-- ARGV:  group, consumer, entry ids...
-- Only entries still pending for *this* consumer are renewed: XCLAIM with min idle 0 would
-- otherwise take back an entry another consumer has already claimed. JUSTID leaves the
-- delivery count alone. Returns the ids that were no longer ours (their lease was lost).
local group, consumer = ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer)
  if #pending == 1 then
    redis.call('XCLAIM', KEYS[1], group, consumer, 0, id, 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
