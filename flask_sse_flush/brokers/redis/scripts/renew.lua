-- Renew the lease of a job this process runs, and the lifetime of its keys.
-- KEYS: [1] job hash, [2] log stream, [3] replaced level entries, [4] active set.
-- ARGV: [1] the lease (ms), [2] the lifetime (ms) of the job's keys while it lives,
--   [3] only while the job is queued (1/0: the lease of a job handed to a
--   queue, which must not replace the lease of a job worker running it).
-- Returns 'ok', 'ended' (the job has its terminal event: nothing to renew),
-- 'unknown' (the store lost it: its next publish makes it again) or
-- 'started' (queued only: a runner holds it now).
local job = KEYS[1]
local st = redis.call('HMGET', job, 'state', 'final_seq')
if not st[1] then return 'unknown' end
if st[2] then return 'ended' end
if ARGV[3] == '1' and st[1] ~= 'queued' then return 'started' end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', job, 'lease', now + tonumber(ARGV[1]))
for i = 1, 3 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
redis.call('PEXPIRE', KEYS[4], ARGV[2])
return 'ok'
