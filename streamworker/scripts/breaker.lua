-- Circuit breaker state shared by every replica (one hash per breaker).
-- KEYS[1] breaker hash
-- ARGV[1] op: "acquire" | "success" | "failure"
-- ARGV[2] failure threshold (consecutive failures that open the breaker)
-- ARGV[3] failure ratio (0..1) that opens it once ARGV[4] calls were seen in the window
-- ARGV[4] minimum calls in the window before the ratio counts
-- ARGV[5] window length (ms) of the ratio counters
-- ARGV[6] cool-down (ms) before a half-open probe is let through
-- ARGV[7] probe lease (ms): how long one probe holds the half-open state for itself
-- Returns {allowed (0/1), wait_ms, state, transition ("" or "from>to")}.
-- Redis TIME is the clock so replicas agree (scripts replicate by effect since Redis 5).
local key = KEYS[1]
local op = ARGV[1]
local threshold = tonumber(ARGV[2])
local ratio = tonumber(ARGV[3])
local min_calls = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local cooldown = tonumber(ARGV[6])
local probe_lease = tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', key, 'state', 'open_until', 'probe_until', 'failures',
  'win_start', 'win_ok', 'win_fail')
local state = h[1] or 'closed'
-- Idle breakers disappear; an open one lives at least through its cool-down.
local ttl = math.max(86400000, cooldown * 2)

local function open(from)
  redis.call('HSET', key, 'state', 'open', 'open_until', now + cooldown, 'failures', 0,
    'win_start', now, 'win_ok', 0, 'win_fail', 0)
  redis.call('PEXPIRE', key, ttl)
  return {0, cooldown, 'open', from .. '>open'}
end

if op == 'acquire' then
  if state == 'closed' then
    return {1, 0, 'closed', ''}
  end
  if state == 'open' then
    local open_until = tonumber(h[2]) or 0
    if now < open_until then
      return {0, open_until - now, 'open', ''}
    end
    -- Cool-down over: this caller is the one probe of the half-open state.
    redis.call('HSET', key, 'state', 'half_open', 'probe_until', now + probe_lease)
    redis.call('PEXPIRE', key, ttl)
    return {1, 0, 'half_open', 'open>half_open'}
  end
  local probe_until = tonumber(h[3]) or 0
  if now < probe_until then
    return {0, probe_until - now, 'half_open', ''}
  end
  -- The last probe never reported back (its worker died): let another one through.
  redis.call('HSET', key, 'probe_until', now + probe_lease)
  return {1, 0, 'half_open', ''}
end

local success = (op == 'success')
if state == 'half_open' then
  if success then
    redis.call('DEL', key)
    return {1, 0, 'closed', 'half_open>closed'}
  end
  return open('half_open')
end
if state == 'open' then
  -- A call that started before the breaker opened: it changes nothing.
  return {0, 0, 'open', ''}
end

local failures = tonumber(h[4]) or 0
local win_start = tonumber(h[5]) or now
local win_ok = tonumber(h[6]) or 0
local win_fail = tonumber(h[7]) or 0
if now - win_start >= window then
  win_start = now
  win_ok = 0
  win_fail = 0
end
if success then
  failures = 0
  win_ok = win_ok + 1
else
  failures = failures + 1
  win_fail = win_fail + 1
  local calls = win_ok + win_fail
  if failures >= threshold or (calls >= min_calls and win_fail / calls >= ratio) then
    return open('closed')
  end
end
redis.call('HSET', key, 'state', 'closed', 'failures', failures, 'win_start', win_start,
  'win_ok', win_ok, 'win_fail', win_fail)
redis.call('PEXPIRE', key, ttl)
return {1, 0, 'closed', ''}
