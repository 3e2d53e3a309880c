"""What the router keeps: the storage interfaces, the SQLite store, sealed secrets."""
