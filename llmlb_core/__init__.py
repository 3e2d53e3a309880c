"""llmlb's core: the router, and the plumbing the router and the node share.

Layers, from the bottom (``.importlinter`` checks them):

- :mod:`llmlb_core.config`: settings and how their problems are told;
- :mod:`llmlb_core.server`: HTTP plumbing both processes use (serving, errors, bodies, logs);
- :mod:`llmlb_core.upstream`: calling nodes and OpenAI-compatible servers (client, relay, SSE);
- :mod:`llmlb_core.storage`: what the router keeps, and the SQLite store;
- :mod:`llmlb_core.protocol`: what crosses between router and node;
- :mod:`llmlb_core.capability`, :mod:`llmlb_core.plugins`, :mod:`llmlb_core.hookspecs` and
  :mod:`llmlb_core.api`: the plugin contract;
- :mod:`llmlb_core.router`: the router's domain (nodes, models, balancing, forwarding, keys);
- :mod:`llmlb_core.cli`: the ``llmlb`` command, where the pieces are put together.
"""
