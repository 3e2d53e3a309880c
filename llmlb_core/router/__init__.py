"""The router: nodes, models, keys, balancing, forwarding, and its own routes."""
