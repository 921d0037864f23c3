-- Create a job: its status hash, and its id in the set of active jobs,
-- unless an admission limit is reached.
-- KEYS: [1] job hash, [2] active set (absent on a Redis Cluster, where
--   admission is a step of its own: admit.lua).
-- ARGV: [1] job id, [2] most active jobs ('' for no limit), [3] epoch,
--   [4] job hash prefix ('<prefix>job:'), [5] owner ('' for none),
--   [6] most active jobs of the owner ('' for no limit), [7] the lease (ms):
--   the job's runner must renew it before then, [8] the lifetime (ms) of
--   the job's keys while it lives (renewed with the lease).
-- Returns 'ok' (also for a retry of this very create: same epoch),
-- 'taken', 'full' or 'owner full'.
local job, active = KEYS[1], KEYS[2]
if redis.call('EXISTS', job) == 1 then
  if redis.call('HGET', job, 'epoch') == ARGV[3] then return 'ok' end
  return 'taken'
end
local limit, owner, owner_limit = tonumber(ARGV[2]), ARGV[5], tonumber(ARGV[6])
if active and (limit or owner_limit) then
  -- Forget jobs whose keys are gone (lost data) or that ended unseen,
  -- and count the owner's.
  local owned = 0
  for _, id in ipairs(redis.call('SMEMBERS', active)) do
    local st = redis.call('HMGET', ARGV[4] .. id, 'state', 'final_seq', 'owner')
    if (not st[1]) or st[2] then
      redis.call('SREM', active, id)
    elseif owner ~= '' and st[3] == owner then
      owned = owned + 1
    end
  end
  if limit and redis.call('SCARD', active) >= limit then return 'full' end
  if owner_limit and owned >= owner_limit then return 'owner full' end
end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', job, 'state', 'queued', 'last_seq', 0, 'epoch', ARGV[3],
  'lost_through', 0, 'lease', now + tonumber(ARGV[7]))
redis.call('PEXPIRE', job, ARGV[8])
if owner ~= '' then redis.call('HSET', job, 'owner', owner) end
if active then
  redis.call('SADD', active, ARGV[1])
  redis.call('PEXPIRE', active, ARGV[8])
end
return 'ok'
