-- Change a job's status fields, if the job exists and has not ended.
-- KEYS: [1] job hash.
-- ARGV: the status change as field, value pairs.
-- Returns 1, 0 for an unknown job, or 2 for an ended one (left as it is: a
-- job worker's "running" must not overwrite the end a lapsed lease gave it).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'final_seq') == 1 then return 2 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
