"""Metadata keys that something else overwrote with a value of another type (issue 16, item 5).

Every Redis error reply becomes a ShardCacheError: ManifestCorrupted naming the key and the fix.
The loader fails with it only where it needs the key (``latest``, the manifest) and reads on
without a lease when the lease key is broken; ``ls``, ``info`` and ``rm`` print one line, and
``rm`` still removes the dataset, deleting the broken keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from shardcache.cache import Manifest, ShardCache
from shardcache.cli import cli
from shardcache.dataloader import CachedDataLoader
from shardcache.errors import ManifestCorrupted
from shardcache.localcluster import LocalCluster
from shardcache.prefetcher import prefetch

from .harness import SHARD_SIZE, assert_exactly_once, epoch_ids, unique_name

pytestmark = pytest.mark.faults

ROWS = range(2400)
KINDS = ["lease", "latest", "versions", "datasets", "manifest"]


def key_of(cache: ShardCache, kind: str, manifest: Manifest) -> str:
    keys, name = cache.keys, manifest.name
    return {
        "lease": keys.leases(name), "latest": keys.latest(name), "versions": keys.versions(name),
        "datasets": keys.datasets(), "manifest": keys.manifest(name, manifest.version),
    }[kind]


def clobber(client: redis.RedisCluster, key: str) -> None:
    """Replace ``key`` with a value of another type than shardcache's."""
    kind = client.type(key)
    client.delete(key)
    if kind in (b"string", "string"):
        client.hset(key, "planted", "1")
    else:
        client.set(key, "planted")


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(result: Result) -> str:
    assert result.exit_code != 0, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert text.startswith("Error: "), text
    return text


@pytest.fixture
def broken(
    request: pytest.FixtureRequest, cluster_factory: Callable[..., LocalCluster], source: Path,
) -> tuple[LocalCluster, ShardCache, Manifest, str]:
    """A dedicated cluster (the dataset list is shared by every dataset) holding one dataset whose
    ``request.param`` key was overwritten; returns the cluster, a cache, the manifest and the key."""
    cluster = cluster_factory(masters=1, replicas=0)
    cache = request.getfixturevalue("caches")(cluster.url)
    manifest = prefetch(source, dataset=unique_name("wrongtype"), cache=cache, shard_size=SHARD_SIZE)
    key = key_of(cache, request.param, manifest)
    if request.param == "lease":
        cache.lease(manifest.name, ttl=600)  # a lease set exists, then is overwritten
    clobber(cache.client, key)
    return cluster, cache, manifest, key


@pytest.mark.parametrize("broken", KINDS, indirect=True)
def test_loader_with_a_metadata_key_of_the_wrong_type(
    broken: tuple[LocalCluster, ShardCache, Manifest, str], caplog: pytest.LogCaptureFixture,
) -> None:
    _, cache, manifest, key = broken
    if key in (cache.keys.latest(manifest.name), cache.keys.manifest(manifest.name, manifest.version)):
        with pytest.raises(ManifestCorrupted) as info:
            CachedDataLoader(manifest.name, cache=cache, batch_size=50, num_workers=0)
        assert key in str(info.value)
        assert f"shardcache rm {manifest.name}" in str(info.value)
        assert "version=" not in str(info.value)
        assert info.value.dataset == manifest.name
        return
    # The lease set, the version list and the dataset list are not needed to read: the epoch runs.
    caplog.set_level(logging.WARNING, logger="shardcache")
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=50, num_workers=0)
    assert_exactly_once(epoch_ids(loader), ROWS)
    assert loader.stats().read_throughs == 0
    if key == cache.keys.leases(manifest.name):
        warned = [r.getMessage() for r in caplog.records if "without a reader lease" in r.getMessage()]
        assert warned, caplog.text
        assert key in warned[0]


@pytest.mark.parametrize("broken", KINDS, indirect=True)
def test_ls_info_rm_with_a_metadata_key_of_the_wrong_type(
    broken: tuple[LocalCluster, ShardCache, Manifest, str],
) -> None:
    cluster, cache, manifest, key = broken
    name, url = manifest.name, cluster.url
    kind = next(k for k in KINDS if key_of(cache, k, manifest) == key)

    listed = run("ls", "--redis", url)
    if kind == "datasets":
        assert key in one_line_error(listed)
    elif kind == "lease":
        assert listed.exit_code == 0, listed.output
    else:  # the dataset's row says what is wrong; the command fails
        assert listed.exit_code == 1
        assert "Traceback" not in listed.output
        row = next(line for line in listed.output.splitlines() if line.startswith(name))
        assert key in row, row

    shown = run("info", name, "--redis", url)
    if kind == "datasets":
        assert shown.exit_code == 0, shown.output
    else:
        assert key in one_line_error(shown)

    removed = run("rm", name, "--redis", url)
    assert removed.exit_code == 0, removed.output
    assert f"removed 1 version(s) of {name!r}" in removed.output
    client = cache.client
    gone = [cache.keys.manifest(name, manifest.version), cache.keys.latest(name), cache.keys.versions(name),
            cache.keys.leases(name)]
    assert not any(client.exists(k) for k in gone), [k for k in gone if client.exists(k)]
    if kind != "manifest":  # without its manifest, `rm` cannot know the shard keys (they expire by TTL)
        assert not any(client.exists(s.key) for s in manifest.shards)
    if kind != "datasets":
        assert name.encode() not in client.smembers(cache.keys.datasets())
        assert run("ls", "--redis", url).exit_code == 0


def test_garbage_latest_blames_the_key_not_a_version_argument(
    cluster_factory: Callable[..., LocalCluster], caches: Callable[..., ShardCache], source: Path,
) -> None:
    cluster = cluster_factory(masters=1, replicas=0)
    cache = caches(cluster.url)
    manifest = prefetch(source, dataset=unique_name("garbage"), cache=cache, shard_size=SHARD_SIZE)
    key = cache.keys.latest(manifest.name)
    cache.client.set(key, "../../not a version")
    with pytest.raises(ManifestCorrupted) as info:
        CachedDataLoader(manifest.name, cache=cache, batch_size=50, num_workers=0)
    message = str(info.value)
    assert key in message
    assert "version=" not in message
    assert f"shardcache rm {manifest.name}" in message
    # Asking for the version by name still works, and `rm` cleans up.
    loader = CachedDataLoader(manifest.name, cache=cache, version=manifest.version, batch_size=50, num_workers=0)
    assert_exactly_once(epoch_ids(loader), ROWS)
    assert key in one_line_error(run("info", manifest.name, "--redis", cluster.url))
    assert run("rm", manifest.name, "--redis", cluster.url).exit_code == 0
    assert not cache.client.exists(key)
