-- scheduler_lease_renew: compare-and-extend. Only the holder of this very term (token and
-- holder id) extends the lease; a holder whose lease expired and was taken learns it here.
-- KEYS:  leader key
-- ARGV:  lease value ("token:holder"), lease ttl (ms)
-- Returns 1 when extended, 0 when the lease is no longer ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
