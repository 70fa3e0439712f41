"""TLS end to end: a cluster serving only ``rediss://`` with certificates from a CA this test makes
(trustme); prefetch and load through it; a wrong or missing CA is refused at once, and turning
the check off is never silent."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner
from faults.harness import assert_exactly_once, epoch_ids, unique_name

from shardcache.cache import RetryPolicy, connect
from shardcache.cli import cli
from shardcache.dataloader import CachedDataLoader
from shardcache.errors import CacheUnavailable, ConfigError
from shardcache.localcluster import LocalCluster, TLSFiles
from shardcache.prefetcher import prefetch

from .conftest import secret

pytestmark = pytest.mark.slow

QUICK = RetryPolicy(deadline=5.0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a server certificate for 127.0.0.1, plus an unrelated CA."""
    root = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = {name: str(root / f"{name}.pem") for name in ("ca", "cert", "key", "stranger")}
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["cert"])
    server.private_key_pem.write_to_path(files["key"])
    stranger.cert_pem.write_to_path(files["stranger"])
    return files


@pytest.fixture(scope="module")
def tls_cluster(
    tmp_path_factory: pytest.TempPathFactory, free_ports: Callable[..., int], pki: dict[str, str],
) -> Iterator[LocalCluster]:
    """One TLS-only cluster for the module (a TLS cluster takes seconds to start on two cores)."""
    tls = TLSFiles(cert_file=pki["cert"], key_file=pki["key"], ca_file=pki["ca"])
    root = tmp_path_factory.mktemp("secure-cluster")
    for attempt in range(5):
        cluster = LocalCluster(masters=3, replicas=0, port=free_ports(3, 21000, 22767), tls=tls,
                               password=secret("tls"), dir=root / str(attempt))
        try:
            cluster.start(timeout=60)
            break
        except ConfigError as exc:
            cluster.stop()
            if "TLS" in str(exc) or "tls-port" in str(exc):  # the server's own words, from its log
                pytest.skip(f"the Redis server binary was built without TLS support: {str(exc)[:300]}")
            if "in use" not in str(exc) or attempt == 4:
                raise
    yield cluster
    cluster.stop()


def test_prefetch_and_load_over_tls(tls_cluster: LocalCluster, pki: dict[str, str], source: Path) -> None:
    assert tls_cluster.url.startswith("rediss://")
    with connect(tls_cluster.url, ssl_ca_certs=pki["ca"], retry=QUICK, env={}) as cache:
        manifest = prefetch(source, dataset=unique_name("tls"), cache=cache, shard_size="8KiB")
        # Two workers: the TLS settings travel with the pickled cache.
        loader = CachedDataLoader(manifest.name, cache=cache, batch_size=64, num_workers=2)
        assert_exactly_once(epoch_ids(loader), range(600))
        assert loader.stats().hits > 0

    # The CLI takes the CA from SHARDCACHE_TLS_CA.
    result = CliRunner().invoke(cli, ["ls", "--redis", tls_cluster.url], env={"SHARDCACHE_TLS_CA": pki["ca"]})
    assert result.exit_code == 0, result.output
    assert manifest.name in result.stdout


@pytest.mark.parametrize("ca", ["stranger", None], ids=["wrong-ca", "no-ca"])
def test_a_certificate_from_an_unknown_ca_is_refused_at_once(
    ca: str | None, tls_cluster: LocalCluster, pki: dict[str, str],
) -> None:
    options = {} if ca is None else {"ssl_ca_certs": pki[ca]}
    # A deadline far longer than the test: a refused certificate must not be retried as if the node were down.
    with pytest.raises(CacheUnavailable, match=r"TLS certificate .* was refused") as caught:
        connect(tls_cluster.url, retry=RetryPolicy(deadline=600.0), env={}, **options)
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert "ssl_ca_certs" in str(caught.value)
    assert "SHARDCACHE_TLS_CA" in str(caught.value)

    result = CliRunner().invoke(cli, ["ls", "--redis", tls_cluster.url],
                                env={} if ca is None else {"SHARDCACHE_TLS_CA": pki[ca]})
    assert result.exit_code == 1, result.output
    assert "TLS certificate" in result.stderr, result.output


def test_turning_the_certificate_check_off_is_never_silent(
    tls_cluster: LocalCluster, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="shardcache")
    with connect(tls_cluster.url, ssl_cert_reqs="none", retry=QUICK, env={}) as cache:
        assert cache.ping()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("verification" in w and "intercepted" in w for w in warnings), warnings


def test_plain_redis_to_a_tls_port_fails_within_the_deadline(tls_cluster: LocalCluster) -> None:
    plain = tls_cluster.url.replace("rediss://", "redis://")
    with pytest.raises(CacheUnavailable, match="did not answer"):
        connect(plain, retry=RetryPolicy(deadline=1.0), connect_timeout=0.5, socket_timeout=0.5, env={})
