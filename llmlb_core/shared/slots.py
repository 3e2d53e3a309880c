"""Node slots counted across routers, in Redis.

Each node has a hash ``llmlb:slots:<node>``: router id -> the slots that router holds there now
(its requests in flight plus the jobs it gave up on that the node may still run). Each router
writes only its own field, and always its absolute count, so a write that is lost or repeated
cannot leave the total wrong: the next one corrects it. A router that dies stops refreshing its
liveness key (``llmlb:router:<id>``, ``ROUTER_TTL_MS``); the scripts below then drop its fields,
so its slots come back within that TTL.

Two scripts, one round trip each:

- :data:`CLAIM`: "I would hold ``mine`` slots on this node of ``capacity``": written only when
  the other live routers' slots plus ``mine`` fit, atomically (no two routers can both take a
  node's last slot). Returns ``[ok, others]``.
- :data:`REPORT`: "I hold ``mine`` now" (after a release): written unconditionally; when that
  turns a full node into one with a free slot, a ``slots`` message wakes the other routers'
  queues (only then: a message per request would cost every router CPU for nothing).
"""

from __future__ import annotations

from llmlb_core.shared.link import CHANNEL, PREFIX, RedisLink

ROUTER_KEY = PREFIX + "router:"
SLOTS_KEY = PREFIX + "slots:"
# A router refreshes its liveness key every ROUTER_TTL_MS / 4; a dead router's slots are free
# once it has expired.
ROUTER_TTL_MS = 4000

# KEYS[1] the node's slots hash. ARGV: router id, router key prefix. Sums the other live
# routers' fields, dropping the dead ones'.
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

# ARGV[3] mine, ARGV[4] capacity.
CLAIM = (
    _OTHERS
    + """
local mine = tonumber(ARGV[3])
if others + mine <= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], ARGV[1], mine)
  return {1, others}
end
return {0, others}
"""
)

# ARGV[3] mine, ARGV[4] capacity, ARGV[5] channel, ARGV[6] message.
REPORT = (
    _OTHERS
    + """
local mine = tonumber(ARGV[3])
if mine > 0 then redis.call('HSET', KEYS[1], ARGV[1], mine) else redis.call('HDEL', KEYS[1], ARGV[1]) end
local cap = tonumber(ARGV[4])
if others + old >= cap and others + mine < cap then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return others
"""
)

# ARGV: router id, router key prefix. The other live routers' slots on this node.
OTHERS = _OTHERS + "\nreturn others\n"


class SharedSlots:
    """This router's side of the slot counts (see the module docstring)."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        client = link.client
        self._claim = client.register_script(CLAIM)
        self._report = client.register_script(REPORT)
        self._others = client.register_script(OTHERS)
        self._me = link.router_id
        self._alive_key = ROUTER_KEY + self._me

    @property
    def up(self) -> bool:
        return self._link.up

    async def claim(self, node_id: str, mine: int, capacity: int) -> tuple[bool, int]:
        """Whether this router may hold ``mine`` slots on ``node_id``, and the others' count."""
        ok, others = await self._link.run(
            self._claim(keys=[SLOTS_KEY + node_id], args=[self._me, ROUTER_KEY, mine, capacity])
        )
        return bool(ok), int(others)

    async def report(self, node_id: str, mine: int, capacity: int) -> int:
        """This router holds ``mine`` slots on ``node_id`` now; the others' count."""
        message = self._link.message("slots", n=node_id)
        others = await self._link.run(
            self._report(
                keys=[SLOTS_KEY + node_id], args=[self._me, ROUTER_KEY, mine, capacity, CHANNEL, message]
            )
        )
        return int(others)

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
