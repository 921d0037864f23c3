-- Admit a new job on a Redis Cluster, where the active jobs are a sorted set
-- of a slot of their own (each job's keys are in its own slot, so no script
-- can count both): the limits are checked and the job counted in one step;
-- the job's hash is made next (create.lua), and release.lua undoes this if
-- the id turns out to be taken.
-- KEYS: [1] active jobs (a sorted set: id -> the end of its lease, ms on
--   Redis' clock), [2] each active job's owner (a hash), [3] the owner's
--   active jobs (a sorted set, like [1]; unused for no owner).
-- ARGV: [1] job id, [2] most active jobs ('' for no limit), [3] owner ('' for
--   none), [4] most active jobs of the owner ('' for no limit), [5] the
--   lease (ms), [6] the lifetime (ms) of these keys while a job lives.
-- Returns 'ok' (counted now), 'again' (counted already: a retry), 'full' or
-- 'owner full'.
local active, owners, owned = KEYS[1], KEYS[2], KEYS[3]
local job, limit, owner, owner_limit = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
if redis.call('ZSCORE', active, job) then return 'again' end
if limit and redis.call('ZCARD', active) >= limit then return 'full' end
if owner ~= '' and owner_limit and redis.call('ZCARD', owned) >= owner_limit then
  return 'owner full'
end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lease = now + tonumber(ARGV[5])
redis.call('ZADD', active, lease, job)
redis.call('PEXPIRE', active, ARGV[6])
if owner ~= '' then
  redis.call('HSET', owners, job, owner)
  redis.call('PEXPIRE', owners, ARGV[6])
  redis.call('ZADD', owned, lease, job)
  redis.call('PEXPIRE', owned, ARGV[6])
end
return 'ok'
