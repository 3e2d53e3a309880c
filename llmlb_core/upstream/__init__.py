"""Calling upstreams (nodes and OpenAI-compatible servers): client, relay, events."""
