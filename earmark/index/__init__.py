"""Storage for earmark: the Redis-protocol store that is the source of truth, and the indexes
derived from it. Nothing here imports `service`."""
