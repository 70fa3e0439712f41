"""Credentials and TLS at the store level: a password (from the URL or the environment), an ACL
user restricted to the prefix and the store's commands, TLS with a CA of our own, and a password
that never shows in a repr, a message or a log line.

The end-to-end versions (CLI, prefetch, loader) live in tests/security/.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from security.acl import MINIMAL_ACL, set_acl_user

from shardcache.cache import RetryPolicy, connect, encode_table
from shardcache.errors import AccessDenied, CacheUnavailable, ConfigError
from shardcache.localcluster import LocalCluster, TLSFiles

from .conftest import new_manifest, tables, write_version

FACTORY_PORTS = (21000, 22767)  # as tests/conftest.py: bus ports below 32768
PASSWORD = f"pw-{uuid.uuid4().hex}/@:?"  # needs percent-encoding in a URL
QUICK = RetryPolicy(deadline=1.0)


def start(make: Callable[[int], LocalCluster], n: int, free_ports: Callable[..., int], *, bus: bool) -> LocalCluster:
    for attempt in range(5):
        cluster = make(free_ports(n, *FACTORY_PORTS, bus=bus))
        try:
            cluster.start(timeout=60)
            return cluster
        except ConfigError as exc:
            cluster.stop()
            if "in use" not in str(exc) or attempt == 4:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory, free_ports: Callable[..., int]) -> Iterator[LocalCluster]:
    """A 3-primary cluster whose default user has PASSWORD; the ACL user "store" is set per test."""
    root = tmp_path_factory.mktemp("protected")
    cluster = start(lambda port: LocalCluster(masters=3, replicas=0, port=port, dir=root, password=PASSWORD),
                    3, free_ports, bus=True)
    yield cluster
    cluster.stop()


def seeds(cluster: LocalCluster) -> str:
    return ",".join(f"127.0.0.1:{p}" for p in cluster.ports[: cluster.masters])


def test_password_from_the_url_or_the_environment(protected: LocalCluster) -> None:
    with connect(f"redis://:{quote(PASSWORD, safe='')}@{seeds(protected)}", env={}) as cache:
        assert cache.ping()
    env = {"SHARDCACHE_REDIS_URL": f"redis://{seeds(protected)}", "SHARDCACHE_REDIS_PASSWORD": PASSWORD}
    with connect(env=env) as cache:
        assert cache.ping()
        assert PASSWORD not in repr(cache)
        assert PASSWORD not in str(cache.url)


def test_wrong_or_missing_password_is_access_denied(protected: LocalCluster) -> None:
    with pytest.raises(AccessDenied, match="password") as info:
        connect(f"redis://:wrong-{quote(PASSWORD, safe='')}@{seeds(protected)}", env={}, retry=QUICK)
    assert PASSWORD not in str(info.value)
    with pytest.raises(AccessDenied):
        connect(f"redis://{seeds(protected)}", env={}, retry=QUICK)


def test_password_never_shows(
    protected: LocalCluster, caplog: pytest.LogCaptureFixture, standalone_url: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = [repr(protected), str(protected)]
    with connect(f"redis://:{quote(PASSWORD, safe='')}@{seeds(protected)}", env={}) as cache:
        seen += [repr(cache), str(cache.url), cache.url.redacted(), repr(cache.url)]
        name = f"test-{uuid.uuid4().hex[:8]}"
        write_version(cache, name, tables(1))
        cache.delete(name)
    for attempt in (
        lambda: connect(f"redis://:{PASSWORD}@{seeds(protected)}", env={}, retry=QUICK),  # unencoded: malformed
        lambda: connect(f"redis://:x{quote(PASSWORD, safe='')}@{seeds(protected)}", env={}, retry=QUICK),
        lambda: connect("redis://127.0.0.1:1", env={"SHARDCACHE_REDIS_PASSWORD": PASSWORD}, retry=QUICK),
        lambda: connect(standalone_url, password=PASSWORD, env={}, retry=QUICK, socket_timout=1),
    ):
        with pytest.raises(Exception) as info:  # noqa: PT011  (several kinds; what matters is the text)
            attempt()
        seen.append(f"{info.value!s} {info.value!r} {info.getrepr()}")
    seen += [r.getMessage() for r in caplog.records] + [caplog.text]
    leaks = [text for text in seen if PASSWORD in text or quote(PASSWORD, safe="") in text]
    assert leaks == []
    # Local users can read every process's argv: the password goes in a private file instead.
    for node in protected.nodes:
        assert PASSWORD.encode() not in Path(f"/proc/{node.pid}/cmdline").read_bytes()


@pytest.fixture
def acl_user(protected: LocalCluster) -> Iterator[str]:
    """An ACL user with README's minimal rule on every node (Redis Cluster does not propagate ACLs); its URL."""
    password = uuid.uuid4().hex
    for port in protected.ports:
        with redis.Redis(port=port, password=PASSWORD) as admin:
            set_acl_user(admin, "store", password, MINIMAL_ACL)
            admin.execute_command("ACL", "LOG", "RESET")
    yield f"redis://store:{password}@{seeds(protected)}"
    for port in protected.ports:
        with redis.Redis(port=port, password=PASSWORD) as admin:
            admin.execute_command("ACL", "DELUSER", "store")


def acl_denials(cluster: LocalCluster) -> list[object]:
    out: list[object] = []
    for port in cluster.ports:
        with redis.Redis(port=port, password=PASSWORD) as admin:
            out += admin.acl_log()
    return out


def test_acl_user_restricted_to_the_prefix_can_do_everything(protected: LocalCluster, acl_user: str) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    parts = tables(3)
    with connect(acl_user, env={}, chunk_size=1000) as cache:
        assert cache.is_cluster
        with cache.lock(name, ttl=1.0) as lock:
            m = cache.begin(new_manifest(name, parts))
            time.sleep(0.5)  # past ttl/3: the renewal script runs under the ACL user too
            cache.put_shard(m, 0, encode_table(parts[0]))
            assert cache.manifest(name).cached_shards == 1
            assert cache.get_table(m, 0).equals(parts[0])  # a loading version: HGET of the record
            for i in (1, 2):
                cache.put_shard(m, i, encode_table(parts[i]))
            m = cache.commit(m, lock=lock)
        assert [i for i, _ in cache.get_shards(m, range(3))] == [0, 1, 2]
        assert cache.missing_shards(m) == []
        with cache.lease(name, "v1", ttl=1.0):
            time.sleep(0.5)
            assert cache.leases(name)
        assert name in cache.datasets()
        assert cache.versions(name) == ["v1"]
        assert len(cache.capacity().nodes) == 3
        assert cache.ping()
        assert cache.delete(name) == ["v1"]
    assert [(d["reason"], d["object"]) for d in acl_denials(protected)] == []


def test_acl_user_is_refused_outside_the_prefix(protected: LocalCluster, acl_user: str) -> None:
    with connect(acl_user, env={}, prefix="other:", retry=QUICK) as cache:
        with pytest.raises(AccessDenied, match="Access control"):
            cache.datasets()
        name = f"test-{uuid.uuid4().hex[:8]}"
        with pytest.raises(AccessDenied):
            write_version(cache, name, tables(1))


def test_tls_with_our_own_ca(
    tmp_path: Path, free_ports: Callable[..., int], caplog: pytest.LogCaptureFixture,
) -> None:
    trustme = pytest.importorskip("trustme")
    ca, stranger = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "cert", "key", "stranger")}
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["cert"])
    server.private_key_pem.write_to_path(files["key"])
    stranger.cert_pem.write_to_path(files["stranger"])
    tls = TLSFiles(cert_file=files["cert"], key_file=files["key"], ca_file=files["ca"])
    try:
        server_proc = start(lambda port: LocalCluster(masters=1, replicas=0, cluster=False, port=port,
                                                      dir=tmp_path / "tls", tls=tls), 1, free_ports, bus=False)
    except ConfigError as exc:
        if "tls" in str(exc).lower():
            pytest.skip(f"the Redis server binary was built without TLS support: {str(exc)[:200]}")
        raise
    try:
        assert server_proc.url.startswith("rediss://")
        name = f"test-{uuid.uuid4().hex[:8]}"
        caplog.set_level(logging.DEBUG, logger="shardcache.cache.store")
        with connect(server_proc.url, env={"SHARDCACHE_TLS_CA": files["ca"]}) as cache:
            m = write_version(cache, name, tables(2, rows=2000))  # shards of some KiB: several TLS records
            assert [cache.get_table(m, i).num_rows for i in range(2)] == [2000, 2000]
            cache.delete(name)
        assert not [r for r in caplog.records if "fell back" in r.getMessage()]  # the direct GET works over TLS
        with pytest.raises(CacheUnavailable, match="certificate"):
            connect(server_proc.url, ssl_ca_certs=files["stranger"], env={}, retry=QUICK)
        with pytest.raises(CacheUnavailable):
            connect(server_proc.url.replace("rediss://", "redis://"), env={}, retry=QUICK)
    finally:
        server_proc.stop()
