-- Renew the lease of a job this process runs, and the lifetime of its keys.
-- KEYS: [1] job hash, [2] log stream, [3] replaced level entries, [4] active set
--   (absent on a Redis Cluster: the store renews it in a step of its own).
-- ARGV: [1] the lease (ms), [2] the lifetime (ms) of the job's keys while it lives,
--   [3] only while the job is queued (1/0: the lease of a job handed to a
--   queue, which must not replace the lease of a job worker running it).
-- Returns {answer, lease, owner}: the answer 'ok' (with the new lease's
-- end, in ms on Redis' clock, and the job's owner or ''), 'ended' (the job has its terminal event: nothing to
-- renew), 'unknown' (the store lost it: its next publish makes it again)
-- or 'started' (queued only: a runner holds it now).
local job = KEYS[1]
local st = redis.call('HMGET', job, 'state', 'final_seq')
if not st[1] then return {'unknown', 0, ''} end
if st[2] then return {'ended', 0, ''} end
if ARGV[3] == '1' and st[1] ~= 'queued' then return {'started', 0, ''} end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lease = now + tonumber(ARGV[1])
redis.call('HSET', job, 'lease', lease)
for i = 1, 3 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
if KEYS[4] then redis.call('PEXPIRE', KEYS[4], ARGV[2]) end
return {'ok', lease, redis.call('HGET', job, 'owner') or ''}
