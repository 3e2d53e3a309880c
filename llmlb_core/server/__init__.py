"""HTTP plumbing the router and the node share: serving, errors, bodies, logs, TLS."""
