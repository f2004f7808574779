-- Distributed rate limit: at most N sends in any window of W ms, across every replica.
-- A sliding-window log (sorted set) of sends, scored by when each send was *over*:
-- while a send is in flight its score is its start + a lease (the longest a send may take),
-- and once it is over the score becomes its end time. A new send starts only when fewer
-- than N sends ended within the last W ms (in-flight ones count as ending late), so the
-- moments the receiver sees the requests - somewhere between start and end of each send -
-- can never put N + 1 of them into one window, whatever the network jitter.
-- KEYS[1] the limit's sorted set
-- ARGV[1] "acquire": ARGV[2] N, ARGV[3] W (ms), ARGV[4] lease (ms), ARGV[5] token
--         -> {1, "0"} started, or {0, wait_ms} (when a slot frees at the earliest)
-- ARGV[1] "finish":  ARGV[2] token -> 1 if the send was still in the log
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
if ARGV[1] == 'finish' then
  if redis.call('ZSCORE', key, ARGV[2]) then
    redis.call('ZADD', key, 'XX', string.format('%.3f', now), ARGV[2])
    return 1
  end
  return 0
end
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.3f', now - window))
local count = redis.call('ZCARD', key)
if count < limit then
  redis.call('ZADD', key, string.format('%.3f', now + lease), ARGV[5])
  redis.call('PEXPIRE', key, math.ceil(window + lease) * 2)
  return {1, '0'}
end
-- The slot frees when the (count - limit + 1)-th earliest end leaves the window. A send
-- still in flight ends at the soonest now (its lease is only the worst case).
local freeing = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
local ends = math.min(tonumber(freeing[2]), now)
return {0, string.format('%.3f', ends + window - now)}
