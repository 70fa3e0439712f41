"""What the cache holds: the dataset list, versions and manifests; beginning and committing a version.

A version is begun as ``loading`` (listed, and ``latest`` points at it, so loaders started
meanwhile read through what is not cached yet); each written shard is recorded in ``done:V``;
commit stores the manifest as ``complete`` if the writer lock is still held. Both steps are Lua
scripts: each applies whole or not at all.
"""

from __future__ import annotations

import redis.exceptions as rex

from ...errors import ConfigError, DatasetLocked, DatasetNotFound, ManifestCorrupted
from ..keys import validate_dataset_name, validate_version
from ..locks import DatasetLock
from ..manifest import Manifest, ShardInfo, apply_shard_record
from .session import Session

__all__ = ["Catalog"]

# KEYS: manifest, versions, latest. ARGV: manifest, version, created_at. Returns the stored
# manifest if the version exists already.
_BEGIN = """
local cur = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[3], ARGV[2])
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return false
"""
# KEYS: manifest, done, lock. ARGV: manifest, lock token ('' when committing without a lock).
_COMMIT = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return redis.error_reply('SHARDCACHE_LOCK_LOST')
end
if not redis.call('GET', KEYS[1]) then
  return redis.error_reply('SHARDCACHE_NO_MANIFEST')
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""


_PARTS_FIELD = "parts"  # not a shard index: readers of done:V skip it


class Catalog:
    """Datasets, versions and manifests in one session. ``shard_ttl`` (seconds, None: none) is
    recorded in the manifests of the versions begun here."""

    def __init__(self, session: Session, *, shard_ttl: float | None) -> None:
        self.session = session
        self.shard_ttl = shard_ttl

    def datasets(self) -> list[str]:
        members = self.session.call("SMEMBERS", self.session.keys.datasets())
        return sorted(m.decode(errors="replace") if isinstance(m, bytes) else str(m) for m in members)

    def versions(self, name: str) -> list[str]:
        raw = self.session.call("ZRANGE", self.session.keys.versions(name), 0, -1)
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in raw]

    def latest_version(self, name: str) -> str | None:
        raw = self.session.call("GET", self.session.keys.latest(name))
        return raw.decode(errors="replace") if isinstance(raw, bytes) else raw

    def manifest(self, name: str, version: str | None = None) -> Manifest:
        session, keys = self.session, self.session.keys
        validate_dataset_name(name)
        if version is None:
            version = self.latest_version(name)
            if version is None:
                raise DatasetNotFound(
                    f"dataset {name!r} is not in the cache {session.url.redacted()}; prefetch it first "
                    "(`shardcache prefetch SOURCE --dataset NAME`) or check `shardcache ls`",
                    dataset=name,
                )
            try:
                validate_version(version)
            except ConfigError:  # the caller passed no version: blame the key, not an argument
                key = keys.latest(name)
                raise ManifestCorrupted(
                    f"the Redis key {key} of dataset {name!r}, which names its newest version, holds "
                    f"{version[:80]!r}, not a version id; remove the dataset with `shardcache rm {name}`, then "
                    "prefetch it again",
                    dataset=name, key=key,
                ) from None
        validate_version(version)
        raw = session.call("GET", keys.manifest(name, version))  # WRONGTYPE: ManifestCorrupted
        if raw is None:
            raise DatasetNotFound(
                f"version {version!r} of dataset {name!r} is not in the cache (removed, or its manifest was "
                "evicted); see `shardcache info` for versions, or prefetch it again",
                dataset=name,
                version=version,
            )
        manifest = Manifest.from_json(raw, expected_name=name, expected_version=version)
        for shard in manifest.shards:
            if shard.key != keys.shard(name, version, shard.index):
                raise ManifestCorrupted(
                    f"the manifest of {name!r} points shard {shard.index} at a foreign key; remove it with "
                    f"`shardcache rm {name} --version {version}` and prefetch again",
                    dataset=name,
                    version=version,
                    shard=shard.index,
                )
        if manifest.state == "loading":
            manifest = self._merge_done(manifest)
        return manifest

    def _merge_done(self, manifest: Manifest) -> Manifest:
        """``manifest`` with the shards recorded in ``done:V`` (written since ``begin``) marked cached."""
        records = self.session.call("HGETALL", self.session.keys.done(manifest.name, manifest.version))
        shards = list(manifest.shards)
        for field, raw in records.items():
            text = field.decode(errors="replace") if isinstance(field, bytes) else str(field)
            if not (text.isascii() and text.isdigit()) or int(text) >= len(shards):
                continue  # not a shard of this manifest: ignore rather than trust it
            index = int(text)
            if not shards[index].cached:
                shards[index] = _recorded(manifest, shards[index], raw)
        return manifest.replace(shards=tuple(shards))

    def shard_info(self, manifest: Manifest, index: int) -> ShardInfo:
        shard = manifest.shards[index]
        if shard.cached or manifest.state == "complete":
            return shard
        raw = self.session.call("HGET", self.session.keys.done(manifest.name, manifest.version), str(index))
        return shard if raw is None else _recorded(manifest, shard, raw)

    def record_parts(self, name: str, version: str, parts: int) -> int:
        """Record that loading ``version`` is split in ``parts`` parts, unless a number is recorded
        already; return the recorded number. It lives in ``done:V`` (field ``parts``), so commit and
        removal drop it with the version's other loading records."""
        key = self.session.keys.done(name, version)
        self.session.call("HSETNX", key, _PARTS_FIELD, str(int(parts)))
        return self.recorded_parts(name, version) or int(parts)

    def recorded_parts(self, name: str, version: str) -> int | None:
        """The number of parts ``version`` was planned in, or None (not planned in parts, or committed)."""
        raw = self.session.call("HGET", self.session.keys.done(name, version), _PARTS_FIELD)
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        return int(text) if isinstance(text, str) and text.isascii() and text.isdigit() else None

    def begin(self, manifest: Manifest) -> Manifest:
        name, version = manifest.name, manifest.version
        session, keys = self.session, self.session.keys
        manifest = self._with_ttl_policy(manifest)
        # Listed first, so that a writer dying between the two calls leaves nothing `ls` cannot see.
        session.call("SADD", keys.datasets(), name)
        existing = session.call(
            "EVAL", _BEGIN, 3, keys.manifest(name, version), keys.versions(name), keys.latest(name),
            manifest.replace(state="loading").to_json(), version, repr(manifest.created_at),
        )
        if existing is None:
            return manifest.replace(state="loading")
        return self.manifest(name, version)

    def _with_ttl_policy(self, manifest: Manifest) -> Manifest:
        """``manifest`` recording this cache's shard TTL (0: none), unless it records one already."""
        if manifest.shard_ttl is not None:
            return manifest
        return manifest.replace(shard_ttl=self.shard_ttl or 0.0)

    def commit(self, manifest: Manifest, *, lock: DatasetLock | None = None) -> Manifest:
        if lock is not None:
            lock.check()
        if manifest.state == "loading":
            # Shards another process (or an earlier run) wrote count too, not only those the caller tracked.
            manifest = self._merge_done(manifest)
        final = self._with_ttl_policy(manifest).replace(state="complete")
        keys = self.session.keys
        try:
            self.session.call(
                "EVAL", _COMMIT, 3, keys.manifest(final.name, final.version), keys.done(final.name, final.version),
                keys.lock(final.name), final.to_json(), lock.token if lock else "",
            )
        except rex.ResponseError as exc:
            if "SHARDCACHE_LOCK_LOST" in str(exc):
                raise DatasetLocked(
                    f"the writer lock of {final.name!r} was taken by another writer before commit; run again",
                    dataset=final.name,
                ) from None
            if "SHARDCACHE_NO_MANIFEST" in str(exc):
                raise DatasetNotFound(
                    f"version {final.version} of {final.name!r} was removed while being written; run again",
                    dataset=final.name,
                    version=final.version,
                ) from None
            raise
        return final


def _recorded(manifest: Manifest, shard: ShardInfo, raw: bytes | str) -> ShardInfo:
    try:
        return apply_shard_record(shard, raw)
    except ManifestCorrupted as exc:
        raise ManifestCorrupted(
            f"{exc} (dataset {manifest.name!r} version {manifest.version}); remove the version with "
            f"`shardcache rm {manifest.name} --version {manifest.version}` and prefetch again",
            dataset=manifest.name, version=manifest.version, shard=shard.index,
        ) from None
