-- Renew the active-set entries of jobs whose lease the store just renewed,
-- on a Redis Cluster (see admit.lua): each entry's score becomes the end of
-- its job's new lease, and the keys' lifetime is renewed.
-- KEYS: [1] active jobs, [2] their owners.
-- ARGV: [1] the owners' sorted sets' prefix, [2] the lifetime (ms),
--   [3...] job id, lease end (ms) pairs.
local active, owners = KEYS[1], KEYS[2]
for i = 3, #ARGV, 2 do
  local job, lease = ARGV[i], ARGV[i + 1]
  redis.call('ZADD', active, lease, job)
  local owner = redis.call('HGET', owners, job)
  if owner then
    redis.call('ZADD', ARGV[1] .. owner, lease, job)
    redis.call('PEXPIRE', ARGV[1] .. owner, ARGV[2])
  end
end
redis.call('PEXPIRE', active, ARGV[2])
if redis.call('EXISTS', owners) == 1 then redis.call('PEXPIRE', owners, ARGV[2]) end
return 1
