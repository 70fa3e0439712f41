"""The shard store on Redis Cluster: manifests, shards, locks, leases and capacity.

>>> from shardcache.cache import connect        # doctest: +SKIP
>>> cache = connect("redis://127.0.0.1:7000")   # doctest: +SKIP
>>> cache.datasets()                            # doctest: +SKIP
['imagenet-train']
"""

from .codec import checksum, decode_payload, encode_table
from .keys import KeySpace
from .locks import DatasetLock, Lease
from .manifest import Manifest, ShardInfo, SourceSegment, SourceSpec
from .retry import RetryPolicy
from .stats import CacheStats
from .store import Capacity, NodeMemory, ShardCache, connect
from .urls import CacheURL, parse_url

__all__ = [
    "connect",
    "ShardCache",
    "Manifest",
    "ShardInfo",
    "SourceSegment",
    "SourceSpec",
    "RetryPolicy",
    "CacheStats",
    "Capacity",
    "NodeMemory",
    "DatasetLock",
    "Lease",
    "KeySpace",
    "CacheURL",
    "parse_url",
    "encode_table",
    "decode_payload",
    "checksum",
]
