"""The ``llmlb`` command: where router, node and plugins are put together."""
