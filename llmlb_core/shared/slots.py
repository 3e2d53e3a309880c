"""Node slots counted across routers, in Redis.

Each node has a hash ``llmlb:slots:<node>``: router id -> the slots that router holds there now
(its requests in flight plus the jobs it gave up on that the node may still run). Each router
changes only its own field, by increments, so commands that arrive in any order add up; after
Redis was away a router writes its whole count again (:meth:`SharedSlots.set`). A router that
dies stops refreshing its liveness key (``llmlb:router:<id>``, ``ROUTER_TTL_MS``); the scripts
below then drop its field, so its slots come back within that TTL.

One script, :data:`SLOTS`, one round trip, does both things a request needs:

- **release** ``n`` slots on some nodes (never below 0). When that turns a full node into one
  with a free slot, a ``slots`` message wakes the other routers' queues (only then: a message
  per request would cost every router CPU for nothing);
- then **claim** one more slot on one node of ``capacity`` slots, only when the live routers'
  slots together leave one free, atomically (no two routers can both take a node's last slot).
  Returns ``[ok, others]``: whether it was taken, and the other routers' count there.

A router sends its releases with its next claim, or on their own a few milliseconds later when
no claim comes (:class:`~llmlb_core.router.balancer.Balancer`), so a busy router makes one round
trip per request. The scripts run on :class:`~llmlb_core.shared.pipe.ScriptPipe`'s pipelined
connection.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmlb_core.shared.link import CHANNEL, PREFIX, RedisLink
from llmlb_core.shared.pipe import Arg, Orphan, ScriptPipe

ROUTER_KEY = PREFIX + "router:"
SLOTS_KEY = PREFIX + "slots:"
# A router refreshes its liveness key every ROUTER_TTL_MS / 4; a dead router's slots are free
# once it has expired.
ROUTER_TTL_MS = 4000

# count(key): the other live routers' slots on that node (dropping the dead ones' fields) and
# this router's. ARGV[1] router id, ARGV[2] router key prefix.
_COUNT = """
local me, prefix = ARGV[1], ARGV[2]
local function count(key)
  local h = redis.call('HGETALL', key)
  local others, old = 0, 0
  for i = 1, #h, 2 do
    local who = h[i]
    if who == me then
      old = tonumber(h[i + 1])
    elseif redis.call('EXISTS', prefix .. who) == 1 then
      others = others + tonumber(h[i + 1])
    else
      redis.call('HDEL', key, who)
    end
  end
  return others, old
end
"""

# KEYS: the R nodes to release on, then the node to claim on (when ARGV[5 + 3R] > 0).
# ARGV[3] channel, ARGV[4] R, then per release: n, capacity, message; then the claim's capacity.
SLOTS = (
    _COUNT
    + """
local r = tonumber(ARGV[4])
for i = 1, r do
  local key, base = KEYS[i], 4 + 3 * (i - 1)
  local n, cap = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local others, old = count(key)
  local mine = math.max(0, old - n)
  if mine > 0 then redis.call('HSET', key, me, mine) else redis.call('HDEL', key, me) end
  if others + old >= cap and others + mine < cap then redis.call('PUBLISH', ARGV[3], ARGV[base + 3]) end
end
local cap = tonumber(ARGV[5 + 3 * r])
if cap <= 0 then return {1, 0} end
local others, old = count(KEYS[r + 1])
if others + old + 1 <= cap then
  redis.call('HINCRBY', KEYS[r + 1], me, 1)
  return {1, others}
end
return {0, others}
"""
)

# KEYS[1] a node: the other live routers' slots there.
OTHERS = _COUNT + "\nlocal others = count(KEYS[1])\nreturn others\n"

# Releases to send: node id -> (slots given back, the node's capacity).
Releases = Mapping[str, tuple[int, int]]


class SharedSlots:
    """This router's side of the slot counts (see the module docstring)."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._pipe = ScriptPipe(link, [SLOTS, OTHERS])
        self._slots_sha, self._others_sha = self._pipe.shas
        self._me = link.router_id
        self._alive_key = ROUTER_KEY + self._me

    @property
    def up(self) -> bool:
        return self._link.up

    def _call(self, releases: Releases, claim_node: str | None, capacity: int) -> tuple[list[str], list[Arg]]:
        keys = [SLOTS_KEY + node_id for node_id in releases]
        args: list[Arg] = [self._me, ROUTER_KEY, CHANNEL, len(releases)]
        for node_id, (n, cap) in releases.items():
            args += [n, cap, self._link.message("slots", n=node_id)]
        if claim_node is not None:
            keys.append(SLOTS_KEY + claim_node)
        args.append(capacity if claim_node is not None else 0)
        return keys, args

    async def claim(
        self, node_id: str, capacity: int, releases: Releases | None = None, orphan: Orphan | None = None
    ) -> tuple[bool, int]:
        """Give back ``releases``, then one more slot on ``node_id`` for this router if one is
        free among all routers; and the other routers' count there. ``orphan`` gets the reply
        (``[ok, others]``) if the caller is cancelled before it comes."""
        keys, args = self._call(releases or {}, node_id, capacity)
        ok, others = await self._pipe.evalsha(self._slots_sha, keys, args, orphan)
        return bool(ok), int(others)

    async def release(self, releases: Releases) -> None:
        """Give back ``releases`` (node id -> (slots, the node's capacity))."""
        keys, args = self._call(releases, None, 0)
        await self._pipe.evalsha(self._slots_sha, keys, args)

    async def others(self, node_id: str) -> int:
        """The slots the other live routers hold on ``node_id``."""
        reply = await self._pipe.evalsha(self._others_sha, [SLOTS_KEY + node_id], [self._me, ROUTER_KEY])
        return int(reply)

    async def set(self, node_id: str, count: int) -> None:
        """This router holds ``count`` slots on ``node_id`` (after Redis was away)."""
        key = SLOTS_KEY + node_id
        client = self._link.client
        await self._link.run(client.hset(key, self._me, count) if count else client.hdel(key, self._me))

    async def alive(self) -> None:
        """Refresh this router's liveness key (every ROUTER_TTL_MS / 4)."""
        await self._link.run(self._link.client.set(self._alive_key, b"1", px=ROUTER_TTL_MS))

    async def leave(self) -> None:
        """A clean shutdown: this router's slots are free at once, not after the TTL."""
        await self._link.run(self._link.client.delete(self._alive_key))
        self._pipe.close()
