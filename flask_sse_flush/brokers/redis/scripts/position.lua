-- Where a channel's log is now, starting a new (empty) log if it has none.
-- KEYS: [1] meta hash, [2] log stream.
-- ARGV: [1] new epoch, [2] retention (ms).
-- Returns {epoch, last number}.
local st = redis.call('HMGET', KEYS[1], 'epoch', 'last')
if st[1] then return {st[1], tonumber(st[2])} end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'last', 0)
local ms = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ms > 0 and ms or 60000)
return {ARGV[1], 0}
