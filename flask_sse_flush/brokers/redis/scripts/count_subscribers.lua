-- Add to the count of streams, on every worker, attached to a job.
-- KEYS: [1] job hash.
-- ARGV: [1] the change (+1 or -1).
-- Returns the new count (never below 0), or 0 for an unknown job.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'subs', ARGV[1])
if n < 0 then redis.call('HSET', KEYS[1], 'subs', 0); n = 0 end
return n
