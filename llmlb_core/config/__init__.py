"""Settings: the router's, and the rules every process's tables share."""
