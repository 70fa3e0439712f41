"""shardcache: a distributed in-memory dataset cache for ML training."""

__version__ = "0.1.0"
