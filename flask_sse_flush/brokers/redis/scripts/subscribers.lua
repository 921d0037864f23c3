-- Set this process's count of streams attached to a job (or only read), and
-- return the count of every live process's. Each process's count is a field
-- of the job's hash ('s:<process>') beside its presence ('p:<process>':
-- until when, on Redis' clock, its streams count) and the version of its
-- last write ('v:<process>'). A write older than the last one kept (two
-- writes that crossed) changes nothing, so writes may land in any order.
-- A write renews the caller's presence, and its lease keeper writes each
-- round for every job it has streams of, so the streams of a process that
-- died stop counting once its presence lapses. Everything is in the job's
-- hash: one slot on a cluster.
-- KEYS: [1] job hash.
-- ARGV: [1] this process's count, or '' to only read, [2] this process's
--   token, [3] the write's version (increasing in each process),
--   [4] the presence's lifetime (ms).
-- Returns the count of attached streams of live processes, or 0 for an
-- unknown job.
local job = KEYS[1]
if redis.call('EXISTS', job) == 0 then return 0 end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ARGV[1] ~= '' then
  local version = tonumber(ARGV[3])
  local kept = tonumber(redis.call('HGET', job, 'v:' .. ARGV[2]) or '0')
  if version > kept then
    -- The version stays when the count goes to 0: a late older write must
    -- not bring a count back.
    redis.call('HSET', job, 'v:' .. ARGV[2], version)
    local count = tonumber(ARGV[1])
    if count <= 0 then
      redis.call('HDEL', job, 's:' .. ARGV[2], 'p:' .. ARGV[2])
    else
      redis.call('HSET', job, 's:' .. ARGV[2], count, 'p:' .. ARGV[2], now + tonumber(ARGV[4]))
    end
  end
end
local total = 0
local fields = redis.call('HGETALL', job)
local values = {}
for i = 1, #fields, 2 do values[fields[i]] = fields[i + 1] end
for name, value in pairs(values) do
  if string.sub(name, 1, 2) == 's:' then
    -- A process whose presence lapsed (it died, or its keeper is late)
    -- does not count now; its field stays, so a late keeper's streams count
    -- again at its next renewal. The job's hash expires with the job.
    local until_ = tonumber(values['p:' .. string.sub(name, 3)])
    if until_ and until_ >= now then total = total + tonumber(value) end
  end
end
return total
