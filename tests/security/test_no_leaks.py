"""The password never shows: not in logs (every logger, DEBUG), exception messages and
tracebacks, reprs, CLI output, or KFP component outputs, on success paths and error paths."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from faults.harness import assert_exactly_once, epoch_ids, unique_name

from shardcache.cache import RetryPolicy, connect
from shardcache.cli import cli
from shardcache.dataloader import CachedDataLoader
from shardcache.errors import ShardCacheError
from shardcache.prefetcher import run_prefetch

from .conftest import SecureCluster, secret

pytestmark = pytest.mark.slow

QUICK = RetryPolicy(deadline=1.0)


class Texts:
    """Everything a user or a log collector could see, gathered for one search at the end."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, value: object) -> None:
        self.items.append((where, value if isinstance(value, str) else repr(value)))

    def error(self, where: str, fn: Callable[[], object]) -> ShardCacheError:
        """Run ``fn``, which must fail with a ShardCacheError; keep its message, repr, args and traceback."""
        with pytest.raises(ShardCacheError) as caught:
            fn()
        exc = caught.value
        self.add(f"{where}: str", str(exc))
        self.add(f"{where}: repr", repr(exc))
        self.add(f"{where}: attributes", vars(exc))
        self.add(f"{where}: traceback", "".join(traceback.format_exception(exc)))
        return exc

    def cli(self, where: str, args: list[str], env: dict[str, str]) -> Any:
        result = CliRunner().invoke(cli, args, env=env)
        self.add(f"cli {where}: output", result.output)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            self.add(f"cli {where}: exception", "".join(traceback.format_exception(result.exception)))
        return result

    def leaks(self, password: str) -> list[str]:
        needles = {password, quote(password, safe=""), password.split("-")[1].rstrip("/@:?")}
        return [where for where, text in self.items if any(n in text for n in needles)]


class Artifact:
    """Stands in for KFP's Output[Markdown] and Output[Metrics] when calling a component's python_func."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.metadata: dict[str, float] = {}

    def log_metric(self, metric: str, value: float) -> None:
        self.metadata[metric] = value


def test_the_password_appears_nowhere(
    secure_cluster: SecureCluster, source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    clean_env: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, redis-py's included
    texts = Texts()
    secure = secure_cluster
    wrong = secret("wrong")
    url, env = secure.url, {"SHARDCACHE_REDIS_PASSWORD": secure.password}
    texts.add("cluster repr", secure.cluster)
    texts.add("cluster status", secure.cluster.status())

    # The library, with the password inside the URL.
    with connect(secure.url_with_password, retry=QUICK) as cache:
        for shown in (cache, cache.url, str(cache.url), cache.url.redacted(), cache.options):
            texts.add("cache", shown)
        name = unique_name("leak")
        report = run_prefetch(source, dataset=name, cache=cache, shard_size="8KiB")
        texts.add("report", report)
        texts.add("report summary", report.summary())
        texts.add("report json", json.dumps(report.to_dict()))
        texts.add("manifest", report.manifest)
        loader = CachedDataLoader(name, cache=cache, batch_size=64, num_workers=2)
        assert_exactly_once(epoch_ids(loader), range(600))
        texts.add("loader", loader)
        texts.add("dataset", loader.dataset)
        texts.add("loader stats", loader.stats())

    # Error paths: wrong password, no such server, a malformed URL, a password where KFP forbids one.
    wrong_url = f"redis://{secure.user}:{quote(wrong, safe='')}@{secure.seeds}"
    texts.error("wrong password", lambda: connect(wrong_url, retry=QUICK))
    closed = f"redis://{secure.user}:{quote(secure.password, safe='')}@127.0.0.1:1"
    texts.error("unreachable", lambda: connect(closed, retry=QUICK))
    texts.error("bad port", lambda: connect(f"redis://u:{quote(secure.password, safe='')}@h:99999", retry=QUICK))
    texts.error("comma in password", lambda: connect(f"redis://u:{secure.password},x@h:1,h:2", retry=QUICK))

    # The CLI: success and failure, the password from the environment and inside --redis.
    assert texts.cli("ls", ["ls", "--redis", url], env).exit_code == 0
    assert texts.cli("info", ["info", name, "--redis", url, "--json"], env).exit_code == 0
    assert texts.cli("prefetch", ["prefetch", str(source), "--dataset", name, "--redis", url, "--shard-size",
                                  "8KiB"], env).exit_code == 0
    assert texts.cli("-vv ls", ["-vv", "ls", "--redis", secure.url_with_password], {}).exit_code == 0
    assert texts.cli("wrong", ["ls", "--redis", url], {"SHARDCACHE_REDIS_PASSWORD": wrong}).exit_code == 1
    assert texts.cli("wrong in url", ["-vv", "info", name, "--redis", wrong_url], {}).exit_code == 1

    # Kubeflow components, called as KFP runs them: the password comes from the environment.
    from shardcache.kubeflow_components import cache_status_op, evict_op, prefetch_op, verify_op

    clean_env.setenv("SHARDCACHE_REDIS_PASSWORD", secure.password)
    metrics, report_md = Artifact(tmp_path / "m.json"), Artifact(tmp_path / "prefetch.md")
    version = prefetch_op.python_func(source=str(source), dataset=name, redis_url=url, shard_size="8KiB",
                                      metrics=metrics, report=report_md)
    texts.add("kfp prefetch", [version, metrics.metadata, Path(report_md.path).read_text()])
    status_md = Artifact(tmp_path / "status.md")
    texts.add("kfp status", cache_status_op.python_func(dataset=name, redis_url=url, report=status_md))
    texts.add("kfp status report", Path(status_md.path).read_text())
    verify_md, verify_metrics = Artifact(tmp_path / "verify.md"), Artifact(tmp_path / "v.json")
    texts.add("kfp verify", verify_op.python_func(dataset=name, redis_url=url, metrics=verify_metrics,
                                                  report=verify_md))
    texts.add("kfp verify report", [Path(verify_md.path).read_text(), verify_metrics.metadata])
    evict_md = Artifact(tmp_path / "evict.md")
    texts.add("kfp evict", evict_op.python_func(dataset=name, redis_url=url, report=evict_md))
    texts.add("kfp evict report", Path(evict_md.path).read_text())
    texts.error("kfp password in url", lambda: prefetch_op.python_func(
        source=str(source), dataset=name, redis_url=secure.url_with_password, metrics=metrics, report=report_md))
    clean_env.setenv("SHARDCACHE_REDIS_PASSWORD", wrong)
    texts.error("kfp wrong password", lambda: cache_status_op.python_func(dataset=name, redis_url=url,
                                                                          report=status_md))

    for record in caplog.records:
        texts.add(f"log {record.name}", record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            texts.add(f"log {record.name} traceback", "".join(traceback.format_exception(record.exc_info[1])))

    # The search is only as good as what it searched: the errors were the expected ones.
    everything = "\n".join(text for _, text in texts.items)
    assert "refused the credentials" in everything
    assert "***" in everything
    assert any(where.startswith("log ") for where, _ in texts.items)
    for password in (secure.password, wrong, secure.admin_password):
        assert texts.leaks(password) == [], f"the password shows in {texts.leaks(password)}"
