"""An example llmlb capability: ``POST /v1/reverse`` answers the text of the request reversed.

The router side lives in :mod:`llmlb_echo_capability.plugin`; the wire contract that a node
runtime satisfies (request and answer types, the model flag, the path) in
:mod:`llmlb_echo_capability.protocol`, which imports nothing but msgspec so that a runtime can
depend on it without pulling the router in.
"""
