-- The active jobs whose runner's lease has lapsed, on Redis' clock.
-- KEYS: [1] active set.
-- ARGV: [1] job hash prefix ('<prefix>job:'), [2] the lifetime (ms) of the set.
-- Returns {job id, last seq} for each lapsed job that has no terminal event;
-- forgets ids whose job is gone or ended. Renews the set's lifetime.
local active = KEYS[1]
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local found = {}
for _, id in ipairs(redis.call('SMEMBERS', active)) do
  local st = redis.call('HMGET', ARGV[1] .. id, 'state', 'final_seq', 'lease', 'last_seq')
  if (not st[1]) or st[2] then
    redis.call('SREM', active, id)
  elseif st[3] and tonumber(st[3]) < now then
    table.insert(found, id)
    table.insert(found, st[4])
  end
end
if redis.call('EXISTS', active) == 1 then redis.call('PEXPIRE', active, ARGV[2]) end
return found
