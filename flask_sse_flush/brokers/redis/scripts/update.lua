-- Change a job's status fields, if the job exists.
-- KEYS: [1] job hash.
-- ARGV: the status change as field, value pairs.
-- Returns 1, or 0 for an unknown job.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
