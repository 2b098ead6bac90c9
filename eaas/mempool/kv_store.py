"""Where framed KV blocks live: Redis (shared by every gateway) or a dict in this process.

Both stores speak in block members (`{fingerprint}:{chain_hash}`) and frames (bytes from codec.py),
keep each block for `ttl_s` after its last use, and evict least-recently-used blocks once the bytes
they hold exceed `budget_bytes` (None: TTL only). Deeper blocks of a chain are made slightly older
than their parents, so eviction takes a chain from its end and never leaves a block without its prefix.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis

from eaas.mempool import codec
from eaas.mempool.keys import DeploymentKeys
from eaas.mempool.redis_link import RedisGuard

CHUNK_BYTES = 4 << 20  # values over this are split across keys `…:{chain_hash}:{n}`

# Registers written blocks (size hash, byte total, LRU set), forgets TTL-expired ones and evicts the
# least recently used until the total is within the budget. One script = atomic across gateways.
# KEYS: kvlru, kvsize, kvbytes. ARGV: kv key prefix, budget (-1: none), ttl s, chunk bytes,
# number of written blocks, then (member, size) per written block, then members to delete.
_ACCOUNT_LUA = """
local lru, sizes, total = KEYS[1], KEYS[2], KEYS[3]
local prefix, budget, ttl, chunk = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local written = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function forget(member)
  local size = tonumber(redis.call('HGET', sizes, member) or '0')
  redis.call('HDEL', sizes, member)
  redis.call('ZREM', lru, member)
  if size > 0 then redis.call('DECRBY', total, size) end
  return size
end
local function drop(member)
  local size = forget(member)
  redis.call('UNLINK', prefix .. member)
  for c = 1, math.ceil(size / chunk) - 1 do redis.call('UNLINK', prefix .. member .. ':' .. c) end
end
for i = 0, written - 1 do
  local member, size = ARGV[6 + 2 * i], tonumber(ARGV[7 + 2 * i])
  forget(member)
  redis.call('HSET', sizes, member, size)
  redis.call('INCRBY', total, size)
  redis.call('ZADD', lru, now - i * 1e-6, member)
end
for i = 6 + 2 * written, #ARGV do drop(ARGV[i]) end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', lru, '-inf', now - ttl)) do forget(member) end
local evicted = 0
if budget >= 0 then
  while tonumber(redis.call('GET', total) or '0') > budget do
    local oldest = redis.call('ZRANGE', lru, 0, 0)
    if #oldest == 0 then break end
    drop(oldest[1])
    evicted = evicted + 1
  end
end
return evicted
"""

# Marks the blocks of a match that exist as just used (stops at the first absent one).
# KEYS: kvlru. ARGV: kv key prefix, members in chain order.
_TOUCH_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then return i - 2 end
  redis.call('ZADD', KEYS[1], 'XX', now - (i - 2) * 1e-6, ARGV[i])
end
return #ARGV - 1
"""


class KVStore(Protocol):
    keys: DeploymentKeys

    async def write(self, entries: list[tuple[str, bytes]]) -> bool:
        """Store (member, frame) pairs in chain order; False when the store is unavailable."""

    async def read(self, members: list[str]) -> list[bytes]:
        """Frames of the longest prefix of members that is stored ([] when unavailable)."""

    async def delete(self, members: list[str]) -> None: ...

    async def close(self) -> None: ...


class RedisKVStore:
    def __init__(self, client: aioredis.Redis, keys: DeploymentKeys, guard: RedisGuard, *,
                 ttl_s: float, budget_bytes: int | None, chunk_bytes: int = CHUNK_BYTES):
        self.client = client
        self.keys = keys
        self._guard = guard
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._ttl_s = ttl_s
        self._budget = -1 if budget_bytes is None else budget_bytes
        self._chunk_bytes = chunk_bytes

    async def write(self, entries: list[tuple[str, bytes]]) -> bool:
        return await self._guard.call("insert", lambda: self._write(entries), fallback=False)

    async def read(self, members: list[str]) -> list[bytes]:
        return await self._guard.call("match", lambda: self._read(members), fallback=[])

    async def delete(self, members: list[str]) -> None:
        await self._guard.call("delete", lambda: self._account([], members), fallback=None)

    async def close(self) -> None:
        await self.client.aclose()

    async def _write(self, entries: list[tuple[str, bytes]]) -> bool:
        pipe = self.client.pipeline(transaction=False)
        for member, frame in entries:
            for n, chunk in enumerate(codec.split_chunks(frame, self._chunk_bytes)):
                pipe.set(self.keys.kv_key(member, n), chunk, px=self._ttl_ms)
        self._queue_account(pipe, [(m, len(f)) for m, f in entries], [])
        await pipe.execute()
        return True

    async def _account(self, written: list[tuple[str, int]], deleted: list[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        self._queue_account(pipe, written, deleted)
        await pipe.execute()

    def _queue_account(self, pipe, written: list[tuple[str, int]], deleted: list[str]) -> None:
        k = self.keys
        args = [k.kv_prefix, self._budget, self._ttl_s, self._chunk_bytes, len(written)]
        for member, size in written:
            args += [member, size]
        pipe.eval(_ACCOUNT_LUA, 3, k.kv_lru, k.kv_sizes, k.kv_bytes, *args, *deleted)

    async def _read(self, members: list[str]) -> list[bytes]:
        # One round trip: every block's first value (refreshing its TTL) and the LRU touch.
        pipe = self.client.pipeline(transaction=False)
        for member in members:
            pipe.getex(self.keys.kv_key(member), px=self._ttl_ms)
        pipe.eval(_TOUCH_LUA, 1, self.keys.kv_lru, self.keys.kv_prefix, *members)
        firsts = []
        for value in (await pipe.execute())[:-1]:
            if value is None:
                break
            firsts.append(value)
        missing = {i: self._chunks_missing(v) for i, v in enumerate(firsts)}
        missing = {i: n for i, n in missing.items() if n}
        if not missing:
            return firsts
        # Values over the chunk size: a second round trip for their remaining chunks.
        pipe = self.client.pipeline(transaction=False)
        for i, n in missing.items():
            for c in range(1, n + 1):
                pipe.getex(self.keys.kv_key(members[i], c), px=self._ttl_ms)
        rest = iter(await pipe.execute())
        frames = []
        for i, first in enumerate(firsts):
            chunks = [next(rest) for _ in range(missing.get(i, 0))]
            if any(c is None for c in chunks):  # a chunk expired or was evicted: the block is gone
                break
            frames.append(b"".join([first, *chunks]) if chunks else first)
        return frames

    @staticmethod
    def _chunks_missing(first: bytes) -> int:
        """How many more chunks the value whose first chunk is `first` has (0 for damaged values)."""
        try:
            frame_len = codec.frame_length(first)
        except codec.RejectedBlock:
            return 0  # decode rejects it
        return max(0, codec.chunk_count(frame_len, len(first)) - 1)


class MemoryKVStore:
    """The in-process store: frames in a dict keyed like Redis (`values`), same TTL and LRU budget."""

    def __init__(self, keys: DeploymentKeys, *, ttl_s: float, budget_bytes: int | None):
        self.keys = keys
        self.values: dict[str, bytes] = {}
        self._ttl_s = ttl_s
        self._budget = budget_bytes
        self._expiry: OrderedDict[str, float] = OrderedDict()  # value key -> deadline, least recent first
        self.used_bytes = 0

    async def write(self, entries: list[tuple[str, bytes]]) -> bool:
        self._drop_expired()
        deadline = time.monotonic() + self._ttl_s
        for member, frame in reversed(entries):  # the chain's first block ends up most recent
            key = self.keys.kv_key(member)
            self._drop(key)
            self.values[key] = frame
            self._expiry[key] = deadline
            self.used_bytes += len(frame)
        while self._budget is not None and self.used_bytes > self._budget and self._expiry:
            self._drop(next(iter(self._expiry)))
        return True

    async def read(self, members: list[str]) -> list[bytes]:
        now = time.monotonic()
        keys = []
        for member in members:
            key = self.keys.kv_key(member)
            if key not in self.values or self._expiry[key] <= now:
                break
            keys.append(key)
        for key in reversed(keys):
            self._expiry[key] = now + self._ttl_s
            self._expiry.move_to_end(key)
        return [self.values[key] for key in keys]

    async def delete(self, members: list[str]) -> None:
        for member in members:
            self._drop(self.keys.kv_key(member))

    async def close(self) -> None:
        self.values.clear()
        self._expiry.clear()
        self.used_bytes = 0

    def _drop(self, key: str) -> None:
        frame = self.values.pop(key, None)
        self._expiry.pop(key, None)
        if frame is not None:
            self.used_bytes -= len(frame)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        while self._expiry:  # deadlines grow along the LRU order, so expired keys come first
            key, deadline = next(iter(self._expiry.items()))
            if deadline > now:
                break
            self._drop(key)
