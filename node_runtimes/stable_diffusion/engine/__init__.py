"""Runs stable-diffusion.cpp for the node: one loaded model, one job at a time (``engine``), in a
worker process (``worker_runner``, ``worker``, ``worker_protocol``) or in the node's process
(``runners``); the binding's calls and their traps (``sdcpp_calls``, ``sdcpp_log``)."""
