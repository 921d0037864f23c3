-- Log one event of a job, apply its status change, bound the log, and
-- publish the event on the job's channel, in one atomic step.
-- KEYS: [1] job hash, [2] log stream, [3] replaced level entries (a list),
--   [4] the active set (absent on a Redis Cluster, where it lives in a slot
--   of its own and the store keeps it in a step of its own).
-- ARGV: [1] job id, [2] seq, [3] frame, [4] level ('' for none),
--   [5] final (1/0), [6] max events, [7] retention (ms), [8] pub/sub channel,
--   [9] may recreate (1/0), [10] new epoch, [11] owner ('' for none),
--   [12] the lease (ms) a publish renews, [13] the lifetime (ms) of the
--   job's keys while it lives, [14] only if the lease has lapsed (1/0: the
--   terminal event of a job whose runner stopped), [15] the publish
--   command ('PUBLISH', or 'SPUBLISH' on a Redis Cluster: a channel of the
--   job's slot), [16...] the status change as field, value pairs.
-- Publishes 'seq\nfinal\nlevel\nframe'. Returns 'ok', 'dup' (logged
-- already: a retry after a lost reply), 'ended', 'unknown' or 'alive' (the
-- lease had not lapsed).
local job, stream, replaced, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local seq = tonumber(ARGV[2])
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if redis.call('EXISTS', job) == 0 then
  if ARGV[9] ~= '1' or ARGV[14] == '1' then return 'unknown' end
  -- The store lost this job while it ran (a restart without persistence,
  -- an eviction): start its log again and say what was lost.
  redis.call('DEL', stream, replaced)
  redis.call('HSET', job, 'state', 'running', 'last_seq', seq - 1, 'epoch', ARGV[10],
    'lost_through', seq - 1)
  if ARGV[11] ~= '' then redis.call('HSET', job, 'owner', ARGV[11]) end
  if active then
    redis.call('SADD', active, ARGV[1])
    redis.call('PEXPIRE', active, ARGV[13])
  end
end
local st = redis.call('HMGET', job, 'last_seq', 'final_seq', 'lost_through', 'lease')
local last = tonumber(st[1])
if st[2] then
  if seq <= tonumber(st[2]) then return 'dup' end
  return 'ended'
end
if ARGV[14] == '1' and ((not st[4]) or tonumber(st[4]) >= now) then return 'alive' end
if seq <= last then return 'dup' end
if seq > last + 1 then
  -- Events between were lost (the store came back from an older state).
  -- (A hole after `last`: a failover to a replica that lagged.) An older
  -- loss is not forgotten: the missing range starts where the first did.
  local after = last
  if (tonumber(st[3]) or 0) > 0 then
    after = math.min(tonumber(redis.call('HGET', job, 'lost_after')) or 0, last)
  end
  redis.call('HSET', job, 'lost_through', seq - 1, 'lost_after', after, 'epoch', ARGV[10])
end
redis.call('XADD', stream, '0-' .. seq, 'f', ARGV[3], 'l', ARGV[4])
for i = 16, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', job, 'last_seq', seq)
-- Each level's newest entry is named in the hash ('lv:<level>'); the entry
-- it replaced waits in a list until the log next passes its bound. So a
-- publish deletes each entry once and never reads the whole log: O(1)
-- amortised, however long the log.
local level = ARGV[4]
if level ~= '' then
  local previous = redis.call('HGET', job, 'lv:' .. level)
  if previous then redis.call('RPUSH', replaced, previous) end
  redis.call('HSET', job, 'lv:' .. level, seq)
end
local bound = tonumber(ARGV[6])
if redis.call('XLEN', stream) > bound then
  -- Keep the newest event of each level and every other event; past the
  -- bound, drop the oldest and remember the newest number dropped.
  for _, n in ipairs(redis.call('LRANGE', replaced, 0, -1)) do
    redis.call('XDEL', stream, '0-' .. n)
  end
  redis.call('DEL', replaced)
  local over = redis.call('XLEN', stream) - bound
  if over > 0 then
    local lost = tonumber(redis.call('HGET', job, 'lost_through')) or 0
    for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', over)) do
      redis.call('XDEL', stream, entry[1])
      local n = tonumber(string.sub(entry[1], 3))
      if n > lost then lost = n end
      local name = 'lv:' .. entry[2][4]
      if entry[2][4] ~= '' and tonumber(redis.call('HGET', job, name)) == n then
        redis.call('HDEL', job, name)
      end
    end
    redis.call('HSET', job, 'lost_through', lost, 'lost_after', 0)
  end
end
if ARGV[5] == '1' then
  -- No publish follows: what the list names stays in the frozen log.
  redis.call('DEL', replaced)
  redis.call('HSET', job, 'final_seq', seq)
  if active then redis.call('SREM', active, ARGV[1]) end
  local ms = tonumber(ARGV[7])
  if ms > 0 then
    redis.call('PEXPIRE', job, ms)
    redis.call('PEXPIRE', stream, ms)
  else
    redis.call('DEL', job, stream)
  end
else
  -- A publish is a sign of life: the runner's lease, and the keys' lifetime.
  if ARGV[14] ~= '1' then redis.call('HSET', job, 'lease', now + tonumber(ARGV[12])) end
  redis.call('PEXPIRE', job, ARGV[13])
  redis.call('PEXPIRE', stream, ARGV[13])
  if redis.call('EXISTS', replaced) == 1 then redis.call('PEXPIRE', replaced, ARGV[13]) end
end
redis.call(ARGV[15], ARGV[8], ARGV[2] .. '\n' .. ARGV[5] .. '\n' .. ARGV[4] .. '\n' .. ARGV[3])
return 'ok'
