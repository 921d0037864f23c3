-- Stop counting jobs as active, on a Redis Cluster (see admit.lua): a job
-- that ended, that the store lost, or whose id was taken.
-- KEYS: [1] active jobs, [2] their owners.
-- ARGV: [1] the owners' sorted sets' prefix, [2...] job ids.
local active, owners = KEYS[1], KEYS[2]
for i = 2, #ARGV do
  local job = ARGV[i]
  redis.call('ZREM', active, job)
  local owner = redis.call('HGET', owners, job)
  if owner then
    redis.call('ZREM', ARGV[1] .. owner, job)
    redis.call('HDEL', owners, job)
  end
end
return 1
