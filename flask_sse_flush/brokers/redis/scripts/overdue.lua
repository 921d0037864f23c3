-- The active jobs whose lease has ended by Redis' clock, on a Redis Cluster
-- (see admit.lua): candidates only, since each job's lease is kept in its
-- own hash, on its own node; the store checks each there, and the job is
-- ended only by publish.lua, which checks the lease on that node's clock.
-- KEYS: [1] active jobs, [2] their owners.
-- ARGV: [1] the lifetime (ms) of the keys, [2] the most ids to return.
-- Returns the ids.
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
end
return found
