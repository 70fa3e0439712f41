"""shardcache.prefetcher."""
