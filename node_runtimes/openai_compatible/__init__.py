"""The ``openai_compatible`` node runtime: a node in front of a local OpenAI-compatible server."""
