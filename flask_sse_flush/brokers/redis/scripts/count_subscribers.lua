-- Count this process's streams attached to a job, and return the count of
-- every live process's. Each process's count is its own field ('s:<process>');
-- a process is live while its presence key exists (its lease keeper renews
-- it), so the streams of a process that died stop counting once it lapses.
-- KEYS: [1] job hash, [2] this process's presence key.
-- ARGV: [1] the change (+1, -1 or 0), [2] this process's token,
--   [3] the presence keys' prefix, [4] the presence's lifetime (ms).
-- Returns the count of attached streams of live processes, or 0 for an
-- unknown job.
local job = KEYS[1]
if redis.call('EXISTS', job) == 0 then return 0 end
local delta = tonumber(ARGV[1])
if delta ~= 0 then
  local mine = redis.call('HINCRBY', job, 's:' .. ARGV[2], delta)
  if mine <= 0 then redis.call('HDEL', job, 's:' .. ARGV[2]) end
  redis.call('SET', KEYS[2], 1, 'PX', ARGV[4])
end
local total = 0
local fields = redis.call('HGETALL', job)
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, 2) == 's:' then
    local process = string.sub(name, 3)
    -- A process whose presence lapsed (it died, or its keeper is late)
    -- does not count now; its field stays, so a late keeper's streams count
    -- again at its next renewal. The job's hash expires with the job.
    if process == ARGV[2] or redis.call('EXISTS', ARGV[3] .. process) == 1 then
      total = total + tonumber(fields[i + 1])
    end
  end
end
return total
