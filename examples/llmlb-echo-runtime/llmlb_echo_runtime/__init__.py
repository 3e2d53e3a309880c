"""An example llmlb node runtime: serves ``POST /v1/reverse`` (the ``reverse`` capability of
``llmlb-echo-capability``) by reversing the text. See :mod:`llmlb_echo_runtime.plugin`."""
