-- Number an event as a channel's next, log it and publish it, in one step.
-- A channel is a hash (its epoch and last number) and a Redis Stream (its
-- log, entry ids 0-<n>, trimmed to max events by XADD itself: O(1) a publish).
-- KEYS: [1] meta hash, [2] log stream, [3] this append's token (a retry
--   after a lost reply finds it and answers as the first run did, so an
--   event is never logged or sent twice).
-- ARGV: [1] new epoch, [2] channel name, [3] frame head, [4] frame tail,
--   [5] max events, [6] retention (ms), [7] pub/sub channel, [8] level
--   ('' for none), [9] and [10] the epoch and number of this process's last
--   append to the channel ('' and 0 for none). A log of that epoch that
--   ends before that number has lost events (a failover to a replica that
--   lagged): it starts a new epoch rather than give their numbers to other
--   events, so a client that saw them gets a gap, never a silent hole.
--   [11] the publish command ('PUBLISH', or 'SPUBLISH' on a Redis Cluster).
-- Publishes 'seq\nepoch\nlevel\nframe'. Returns {epoch, seq}.
local meta, log = KEYS[1], KEYS[2]
local done = redis.call('GET', KEYS[3])
if done then
  local first, number = string.match(done, '^(%S+) (%d+)$')
  return {first, tonumber(number)}
end
local epoch = redis.call('HGET', meta, 'epoch')
if epoch and epoch == ARGV[9] and tonumber(redis.call('HGET', meta, 'last')) < tonumber(ARGV[10]) then
  epoch = nil
end
if not epoch then
  -- A new log, or one the store lost: a new epoch, so resumes can tell.
  epoch = ARGV[1]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'last', 0)
end
local seq = redis.call('HINCRBY', meta, 'last', 1)
local frame = ARGV[3] .. 'id: ' .. ARGV[2] .. '-' .. epoch .. '.' .. seq .. '\n' .. ARGV[4]
redis.call('XADD', log, 'MAXLEN', ARGV[5], '0-' .. seq, 'f', frame, 'l', ARGV[8])
local ms = tonumber(ARGV[6])
if ms > 0 then
  redis.call('PEXPIRE', meta, ms)
  redis.call('PEXPIRE', log, ms)
else
  redis.call('DEL', log)
  redis.call('PEXPIRE', meta, 60000)
end
redis.call('SET', KEYS[3], epoch .. ' ' .. seq, 'PX', 60000)
redis.call(ARGV[11], ARGV[7], seq .. '\n' .. epoch .. '\n' .. ARGV[8] .. '\n' .. frame)
return {epoch, seq}
