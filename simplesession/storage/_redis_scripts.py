"""The Lua scripts of :class:`~simplesession.RedisStorage`: each runs on the server in one step.

Every script that touches a session takes its keys in ``KEYS``, and all of a session's keys
share one hash tag, so that a script runs on Redis Cluster too (see ``RedisStorage``).
"""

from __future__ import annotations

__all__ = ["COMMIT", "LOCK_READ", "READ", "RENEW", "SET_ASIDE"]

# Takes the lock KEYS[1] with the token ARGV[1] for ARGV[2] ms if it is free (or already
# ours: a retried call must not wait for itself), and in the same step reads the session
# KEYS[2] as READ does, with ARGV[3] and ARGV[4] as READ's ARGV[1] and ARGV[2]. Returns an
# empty array if another holder has the lock; else what was read: the value (nil if none),
# its size for a value over the limit, or -1 for a value that is not a string. Nothing may
# fail after the SET: a script is not rolled back, so the read uses pcall. Each call inside
# a script costs the server about as much as a command: the usual path makes three. The
# reply is one flat value, not an array, as it is the cheapest for the client to parse.
LOCK_READ = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {} end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local size = redis.pcall('STRLEN', KEYS[2])
if type(size) == 'table' then return -1 end
if size > tonumber(ARGV[3]) then return size end
if ARGV[4] == '' then return redis.call('GET', KEYS[2]) end
return redis.call('GETEX', KEYS[2], 'PX', ARGV[4])
"""

# What a holder does at the end, fenced by its token: only if the lock KEYS[1] still holds
# ARGV[1], it sets the session KEYS[2] to ARGV[3] (expiring after ARGV[4] ms unless that is
# ''), deletes it, or neither (ARGV[2]: 'set', 'del', ''), and with ARGV[5] == '1' releases
# the lock. Returns 0, doing nothing, when the lock expired and maybe another holder took
# it: a holder that was paused or cut off never overwrites what came after it.
COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'set' then
  if ARGV[4] == '' then redis.call('SET', KEYS[2], ARGV[3]) else redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) end
elseif ARGV[2] == 'del' then
  redis.call('DEL', KEYS[2])
end
if ARGV[5] == '1' then redis.call('DEL', KEYS[1]) end
return 1
"""

# Only the holder's token may renew a lock: one that expired and was taken by another
# holder is not ours to touch.
RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"

# A session's value in one round trip, but only if it takes at most ARGV[1] bytes: else its
# size, so that a value too big for a session is never sent (nor its expiry renewed). With
# ARGV[2], the expiry in ms, the read renews it.
READ = """
local size = redis.call('STRLEN', KEYS[1])
if size > tonumber(ARGV[1]) then return size end
if ARGV[2] == '' then return redis.call('GET', KEYS[1]) end
return redis.call('GETEX', KEYS[1], 'PX', ARGV[2])
"""

# Moves KEYS[1] to KEYS[2] for good, but only if it still is what the caller saw (ARGV[1]:
# 'same' = the string ARGV[2], 'other' = not a string of at most ARGV[2] bytes), so a good
# value that a writer put there meanwhile stays.
SET_ASIDE = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return 0 end
if ARGV[1] == 'same' and (kind ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[2]) then return 0 end
if ARGV[1] == 'other' and kind == 'string' and redis.call('STRLEN', KEYS[1]) <= tonumber(ARGV[2]) then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PERSIST', KEYS[2])
return 1
"""
