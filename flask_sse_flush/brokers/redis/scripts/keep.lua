-- Renew the active-set entries of jobs whose lease the store just renewed,
-- on a Redis Cluster (see admit.lua): each entry's score becomes the end of
-- its job's new lease, and the keys' lifetime is renewed.
-- KEYS: [1] active jobs, [2] their owners.
-- ARGV: [1] the owners' sorted sets' prefix, [2] the lifetime (ms),
--   [3...] job id, lease end (ms), owner ('' for none) triples (the owner
--   from the job's own hash: an entry the sweep removed comes back whole).
local active, owners = KEYS[1], KEYS[2]
for i = 3, #ARGV, 3 do
  local job, lease, owner = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('ZADD', active, lease, job)
  if owner ~= '' then
    redis.call('HSET', owners, job, owner)
    redis.call('ZADD', ARGV[1] .. owner, lease, job)
    redis.call('PEXPIRE', ARGV[1] .. owner, ARGV[2])
  end
end
redis.call('PEXPIRE', active, ARGV[2])
if redis.call('EXISTS', owners) == 1 then redis.call('PEXPIRE', owners, ARGV[2]) end
return 1
