"""What the router keeps: storage interfaces, the SQLite and PostgreSQL stores, sealed secrets."""
