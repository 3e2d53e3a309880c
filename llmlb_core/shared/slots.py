"""Node slots counted across routers, in Redis.

Each node has a hash ``llmlb:slots:<node>``: router id -> the slots that router holds there now
(its requests in flight plus the jobs it gave up on that the node may still run). Each router
changes only its own field, by increments, so commands that arrive in any order add up; after
Redis was away a router writes its whole count again (:meth:`SharedSlots.set`). A router that
dies stops refreshing its liveness key (``llmlb:router:<id>``, ``ROUTER_TTL_MS``); the scripts
below then drop its field, so its slots come back within that TTL.

Two scripts, one round trip each:

- :data:`CLAIM`: one more slot for this router on a node of ``capacity`` slots, only when the
  live routers' slots together leave one free, atomically (no two routers can both take a
  node's last slot). Returns ``[ok, others]``: whether it was taken, and the other routers'
  count.
- :data:`RELEASE`: ``n`` slots fewer (never below 0). When that turns a full node into one with
  a free slot, a ``slots`` message wakes the other routers' queues (only then: a message per
  request would cost every router CPU for nothing).
"""

from __future__ import annotations

from llmlb_core.shared.link import CHANNEL, PREFIX, RedisLink

ROUTER_KEY = PREFIX + "router:"
SLOTS_KEY = PREFIX + "slots:"
# A router refreshes its liveness key every ROUTER_TTL_MS / 4; a dead router's slots are free
# once it has expired.
ROUTER_TTL_MS = 4000

# KEYS[1] the node's slots hash. ARGV: router id, router key prefix. Sums the other live
# routers' fields (``others``), dropping the dead ones'; ``old`` is this router's.
_OTHERS = """
local h = redis.call('HGETALL', KEYS[1])
local others, old = 0, 0
for i = 1, #h, 2 do
  local r = h[i]
  if r == ARGV[1] then
    old = tonumber(h[i + 1])
  elseif redis.call('EXISTS', ARGV[2] .. r) == 1 then
    others = others + tonumber(h[i + 1])
  else
    redis.call('HDEL', KEYS[1], r)
  end
end
"""

# ARGV[3] capacity.
CLAIM = (
    _OTHERS
    + """
if others + old + 1 <= tonumber(ARGV[3]) then
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  return {1, others}
end
return {0, others}
"""
)

# ARGV[3] n, ARGV[4] capacity, ARGV[5] channel, ARGV[6] message.
RELEASE = (
    _OTHERS
    + """
local mine = math.max(0, old - tonumber(ARGV[3]))
if mine > 0 then redis.call('HSET', KEYS[1], ARGV[1], mine) else redis.call('HDEL', KEYS[1], ARGV[1]) end
local cap = tonumber(ARGV[4])
if others + old >= cap and others + mine < cap then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return others
"""
)

# The other live routers' slots on this node.
OTHERS = _OTHERS + "\nreturn others\n"


class SharedSlots:
    """This router's side of the slot counts (see the module docstring)."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        client = link.client
        self._claim = client.register_script(CLAIM)
        self._release = client.register_script(RELEASE)
        self._others = client.register_script(OTHERS)
        self._me = link.router_id
        self._alive_key = ROUTER_KEY + self._me

    @property
    def up(self) -> bool:
        return self._link.up

    async def claim(self, node_id: str, capacity: int) -> tuple[bool, int]:
        """One more slot on ``node_id`` for this router if one is free among all routers; and
        the other routers' count."""
        ok, others = await self._link.run(
            self._claim(keys=[SLOTS_KEY + node_id], args=[self._me, ROUTER_KEY, capacity])
        )
        return bool(ok), int(others)

    async def release(self, node_id: str, n: int, capacity: int) -> int:
        """``n`` slots fewer on ``node_id`` for this router; the other routers' count."""
        message = self._link.message("slots", n=node_id)
        args: list[str | int | bytes] = [self._me, ROUTER_KEY, n, capacity, CHANNEL, message]
        others = await self._link.run(self._release(keys=[SLOTS_KEY + node_id], args=args))
        return int(others)

    async def set(self, node_id: str, count: int) -> None:
        """This router holds ``count`` slots on ``node_id`` (after Redis was away)."""
        key = SLOTS_KEY + node_id
        client = self._link.client
        await self._link.run(client.hset(key, self._me, count) if count else client.hdel(key, self._me))

    async def others(self, node_id: str) -> int:
        """The slots the other live routers hold on ``node_id``."""
        call = self._others(keys=[SLOTS_KEY + node_id], args=[self._me, ROUTER_KEY])
        return int(await self._link.run(call))

    async def alive(self) -> None:
        """Refresh this router's liveness key (every ROUTER_TTL_MS / 4)."""
        await self._link.run(self._link.client.set(self._alive_key, b"1", px=ROUTER_TTL_MS))

    async def leave(self) -> None:
        """A clean shutdown: this router's slots are free at once, not after the TTL."""
        await self._link.run(self._link.client.delete(self._alive_key))
