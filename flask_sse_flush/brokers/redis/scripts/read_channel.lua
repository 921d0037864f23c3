-- A channel's epoch, last number and logged events after a number, read at once.
-- KEYS: [1] meta hash, [2] log stream.
-- ARGV: [1] the number the reader has everything up to.
-- Returns {epoch or false, last number or false, entries (as XRANGE gives them)}.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'last')
return {meta[1], meta[2], redis.call('XRANGE', KEYS[2], '0-' .. (tonumber(ARGV[1]) + 1), '+')}
