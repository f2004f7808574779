-- scheduler_lease_acquire: take the scheduler leader lease when it is free (a new term with
-- the next fencing token), or extend it when this holder already has it.
-- KEYS:  leader key, fence counter
-- ARGV:  holder id (unique per process run), lease ttl (ms)
-- Returns the token of the holder's term, or 0 while another holder has the lease.
local current = redis.call('GET', KEYS[1])
if current then
  local token, holder = string.match(current, '^(%d+):(.*)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
