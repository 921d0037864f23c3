-- Mark a running job cancelled, once, and tell every worker.
-- KEYS: [1] job hash.
-- ARGV: [1] the cancel pub/sub channel, [2] job id, [3] the publish command
--   ('PUBLISH', or 'SPUBLISH' on a Redis Cluster: a channel of the job's slot).
-- Returns 1 (cancelled now or before), or 0 for an unknown or ended job.
local st = redis.call('HMGET', KEYS[1], 'state', 'final_seq', 'cancelled')
if (not st[1]) or st[2] then return 0 end
if st[3] then return 1 end
redis.call('HSET', KEYS[1], 'cancelled', 1)
redis.call(ARGV[3], ARGV[1], ARGV[2])
return 1
