-- A job's status and its logged events after a number, read at once.
-- KEYS: [1] job hash, [2] log stream.
-- ARGV: [1] the number the reader has everything up to.
-- Returns {status fields (name, value, ...), entries (as XRANGE gives them)}.
return {
  redis.call('HGETALL', KEYS[1]),
  redis.call('XRANGE', KEYS[2], '0-' .. (tonumber(ARGV[1]) + 1), '+'),
}
