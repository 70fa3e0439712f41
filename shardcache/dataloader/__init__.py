"""shardcache.dataloader."""
