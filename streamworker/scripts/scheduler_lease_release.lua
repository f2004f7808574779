-- scheduler_lease_release: compare-and-delete, so a stopping scheduler frees the lease for a
-- fast takeover but never deletes a lease another holder took meanwhile.
-- KEYS:  leader key
-- ARGV:  lease value ("token:holder")
-- Returns 1 when released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
