"""The pieces of the comparison that need no servers: options, targets, the table, scaling summaries."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from shardcache.errors import ConfigError


def _report(compare: ModuleType) -> ModuleType:
    import comparison.report  # on sys.path once compare.py is loaded

    return comparison.report


def _outcome(key: str, family: str, *, workers: int | None, batch: int | None, seconds: float, samples: int,
             group: str = "alternative", rss: int = 300_000_000, shuffle: bool | None = None) -> object:
    from comparison.rounds import Outcome, System

    system = System(key=key, family=family, name=family, group=group, spec={}, python="python", workers=workers,
                    batch_size=batch, shuffle=shuffle)
    run: dict[str, object] = {"seconds": seconds, "samples": samples, "nbytes": samples * 1000, "peak_rss": rss,
                              "first_batch_s": 0.1, "first_epoch_s": seconds * 2, "first_epoch_samples": samples}
    if shuffle:
        run["quality"] = {"mean_move": 0.3, "shards_per_batch": 5.0, "unmatched": 0}
    return Outcome(system, runs=[run, {**run, "seconds": seconds * 3}, {**run, "seconds": seconds * 0.9}])


def test_targets_are_judged_on_shuffled_reads_of_the_same_run(compare: ModuleType) -> None:
    report = _report(compare)
    outcomes = [
        _outcome("get/w0", "get", workers=0, batch=None, seconds=0.5, samples=1000, group="limit"),  # 2x faster
        _outcome("get/w2", "get", workers=2, batch=None, seconds=0.8, samples=1000, group="limit"),
    ]
    for shuffle, slower in ((True, 1.0), (False, 0.9)):
        mode = "shuffled" if shuffle else "unshuffled"
        outcomes += [
            _outcome(f"cached/w0/b64/{mode}", "cached", workers=0, batch=64, seconds=1.0 * slower, samples=1000,
                     group="shardcache", shuffle=shuffle),
            _outcome(f"cached/w2/b64/{mode}", "cached", workers=2, batch=64, seconds=1.0, samples=1000,
                     group="shardcache", shuffle=shuffle),
            # Unshuffled Parquet is as fast as CachedDataLoader; shuffled, it is half as fast.
            _outcome(f"parquet/w0/b64/{mode}", "parquet", workers=0, batch=64, seconds=2.0 if shuffle else 0.9,
                     samples=1000, shuffle=shuffle),
            _outcome(f"s3/w0/b64/{mode}", "s3", workers=0, batch=64, seconds=4.0, samples=1000, shuffle=shuffle),
            _outcome(f"mds/w0/b64/{mode}", "mds", workers=0, batch=64, seconds=1.9, samples=1000, shuffle=shuffle),
        ]
    outcomes += [
        _outcome("prefetch", "prefetch", workers=None, batch=None, seconds=1.0, samples=1000, group="shardcache"),
        _outcome("set", "set", workers=None, batch=None, seconds=1.25, samples=1000, group="limit"),
    ]
    rows = report.build_rows(outcomes, sample_bytes=1000)
    by_key = {r.key: r for r in rows}
    # Medians of 1.0, 3.0 and 0.9 s.
    assert by_key["cached/w0/b64/shuffled"].samples_per_s == pytest.approx(1000.0)
    assert by_key["cached/w0/b64/shuffled"].first_epoch_samples_per_s == pytest.approx(500.0)  # 2, 6, 1.8 s
    assert by_key["cached/w0/b64/shuffled"].quality == {"mean_move": 0.3, "shards_per_batch": 5.0, "unmatched": 0}
    assert by_key["cached/w0/b64/unshuffled"].quality is None
    # Each loader against CachedDataLoader read the same way; references against the shuffled one.
    assert by_key["parquet/w0/b64/shuffled"].shardcache_ratio == pytest.approx(2.0)
    assert by_key["parquet/w0/b64/unshuffled"].shardcache_ratio == pytest.approx(1.0)
    assert by_key["get/w0"].shardcache_ratio == pytest.approx(0.5)
    assert by_key["set"].shardcache_ratio == pytest.approx(1.25)
    scaling = {"rss_growth_x4": 1.02}
    targets = {t.name: t for t in report.build_targets(rows, workers=[0, 2], scaling=scaling)}
    get0 = targets["shuffled CachedDataLoader / bare GET loop (workers=0)"]
    assert (get0.status, get0.value) == ("MISS", pytest.approx(0.5))
    both0 = targets["CachedDataLoader shuffled / unshuffled (workers=0)"]
    assert (both0.status, both0.value) == ("MISS", pytest.approx(0.9))
    both2 = targets["CachedDataLoader shuffled / unshuffled (workers=2)"]
    assert (both2.status, both2.value) == ("PASS", pytest.approx(1.0))
    cold = targets["shuffled CachedDataLoader cold first epoch / bare GET loop (workers=2)"]
    assert (cold.status, cold.value) == ("MISS", pytest.approx(500 / 1250))
    assert "shuffled CachedDataLoader cold first epoch / bare GET loop (workers=0)" not in targets
    parquet = targets["shuffled CachedDataLoader / shuffled plain Parquet DataLoader (local disk)"]
    assert (parquet.status, parquet.value) == ("PASS", pytest.approx(2.0))  # 1.11x unshuffled: not judged
    mds = targets["shuffled CachedDataLoader / shuffled MosaicML Streaming (local disk)"]
    assert (mds.status, mds.value) == ("MISS", pytest.approx(1.9))  # goal 2x
    assert targets["shuffled CachedDataLoader / shuffled direct S3, no cache"].status == "MISS"  # 4x < 5x
    assert targets["prefetch / bare SET loop"].status == "PASS"
    assert targets["loader peak RSS, dataset x4 / x1"].status == "PASS"
    litdata = targets["shuffled CachedDataLoader / shuffled LitData (local disk)"]
    assert (litdata.status, litdata.value) == ("SKIP", None)
    assert "litdata was not measured" in litdata.detail

    shuffled, unshuffled, writes = report.split_rows(rows)
    assert [r.key for r in shuffled][:2] == ["get/w0", "get/w2"]
    assert all(r.shuffle is not False for r in shuffled)
    assert all(r.shuffle is False for r in unshuffled)
    assert [r.key for r in writes] == ["prefetch", "set"]
    quality = report.render_quality(rows)
    assert "CachedDataLoader" not in quality  # the rows are named by family here
    assert "cached w=0 b=64 shuffled: mean move 0.300 of the epoch, 5.0 source shards per batch" in quality


def test_quality_finds_each_delivered_sample_in_the_source(compare: ModuleType, tmp_path: Path) -> None:
    import numpy as np
    from comparison.quality import Recorder

    rng = np.random.default_rng(1)
    rows, sample = 40, 16
    images = rng.integers(0, 256, size=(rows, sample), dtype=np.uint8)
    raw = tmp_path / "images.u8"
    raw.write_bytes(images.tobytes())

    def quality(order: np.ndarray, batch: int) -> dict[str, float]:
        recorder = Recorder()
        for start in range(0, rows, batch):
            recorder({"image": images[order[start : start + batch]]})
        return recorder.measure(raw=str(raw), sample_bytes=sample, block_rows=10)

    plain = quality(np.arange(rows), 10)
    assert plain == {"mean_move": 0.0, "shards_per_batch": 1.0, "unmatched": 0}
    reverse = quality(np.arange(rows)[::-1], 10)
    assert reverse["mean_move"] == pytest.approx(np.abs(np.arange(rows) - np.arange(rows)[::-1]).mean() / rows)
    mixed = quality(np.arange(rows).reshape(4, 10).T.ravel(), 8)  # 0, 10, 20, 30, 1...: 4 blocks per batch
    assert mixed["shards_per_batch"] == pytest.approx(4.0)
    recorder = Recorder()
    recorder({"image": np.zeros((3, sample), dtype=np.uint8)})  # no such sample in the source
    assert recorder.measure(raw=str(raw), sample_bytes=sample, block_rows=10)["unmatched"] == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_the_shuffled_parquet_loader_delivers_every_sample_once_in_a_new_order(
    compare: ModuleType, tmp_path: Path, workers: int
) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from comparison.child import _parquet_dataset
    from torch.utils.data import DataLoader

    files = []
    for k in range(3):
        labels = np.arange(k * 50, (k + 1) * 50, dtype=np.int64)
        ints = pa.py_buffer(labels.astype(np.int32).tobytes())
        images = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4), 50, [None, ints])
        path = tmp_path / f"part-{k}.parquet"
        pq.write_table(pa.table({"image": images, "label": labels}), path, row_group_size=20)
        files.append(str(path))
    dataset = _parquet_dataset(files, 16, None, [4], shuffle=True, buffer=32, seed=0)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert all(len(b["label"]) <= 16 for b in batches)
        labels = [int(x) for b in batches for x in b["label"]]
        images = [int(x) for b in batches for x in b["image"].reshape(-1, 4).numpy().view(np.int32).ravel()]
        assert images == labels  # each image travels with its own label
        assert sorted(labels) == list(range(150))
        epochs.append(labels)
    assert epochs[0] != epochs[1]
    assert epochs[0] != sorted(epochs[0])


def test_table_shows_skipped_and_failed_systems_with_the_reason(compare: ModuleType) -> None:
    from comparison.rounds import Outcome, System

    report = _report(compare)
    skipped = Outcome(System(key="mds/w0/b256", family="mds", name="MosaicML", group="alternative", spec={},
                             python="python", workers=0, batch_size=256), skipped="skipped (--no-peers)")
    failed = Outcome(System(key="s3/w0/b256", family="s3", name="S3", group="alternative", spec={}, python="python",
                            workers=0, batch_size=256), error="s3 exited with 1:\nOSError: boom")
    rows = report.build_rows([skipped, failed], sample_bytes=100)
    text = report.render_table(rows)
    assert "MosaicML [skipped: skipped (--no-peers)]" in text
    assert "S3 [failed: OSError: boom]" in text
    markdown = report.render_table(rows, markdown=True)
    assert markdown.splitlines()[0].startswith("| system | workers | batch | MB/s")


def test_scaling_summary_reports_linear_time_and_flat_memory(compare: ModuleType) -> None:
    from comparison.scaling import _summary, render_scaling

    def point(factor: int, seconds: float, rss: float) -> dict[str, object]:
        return {"factor": factor, "shard_size": 4 << 20, "rows": 100 * factor, "bytes": 10**8 * factor,
                "prefetch_s": seconds * 2, "prefetch_mb_per_s": 50.0,
                "loader": {"0": {"batch_size": 256, "seconds": seconds, "mb_per_s": 1.0, "peak_rss_mb": rss}}}

    points = [point(1, 1.0, 400.0), point(2, 2.1, 404.0), point(4, 3.9, 408.0)]
    summary = _summary(points, 4 << 20)
    assert summary["rss_growth_x4"] == pytest.approx(1.02)
    assert summary["time_ratio_x4_by_workers"]["0"] == pytest.approx(3.9)
    text = render_scaling({"points": points, **summary})
    assert "loader time x4/x1 (linear = 4.00): w=0: 3.90; prefetch x4/x1: 3.90" in text
    assert "after the first batch" not in text


def test_options_are_validated_with_the_fix_named(compare: ModuleType) -> None:
    with pytest.raises(ConfigError, match="--workers"):
        compare.build_config(compare.parse_args(["--workers", "two"]))
    with pytest.raises(ConfigError, match="unknown systems"):
        compare.build_config(compare.parse_args(["--quick", "--systems", "cached,tensorflow"]))
    with pytest.raises(ConfigError, match="3x224x224"):
        compare.build_config(compare.parse_args(["--quick", "--image-shape", "3xAx2"]))
    cfg = compare.build_config(compare.parse_args(["--quick"]))
    assert (cfg.image_shape, cfg.rounds, cfg.warmup, cfg.batch_sizes) == ((3, 64, 64), 1, 0, (64,))


def test_peers_are_never_used_in_ci(compare: ModuleType) -> None:
    from comparison.config import default_size, peers_decision

    assert peers_decision(no_peers=False, env={"CI": "true"})[0] is False
    assert "CI=true" in peers_decision(no_peers=False, env={"CI": "true"})[1]
    assert peers_decision(no_peers=True, env={})[0] is False
    assert peers_decision(no_peers=False, env={})[0] is True
    assert default_size(available=100 * 10**9, cpus=8) == 2 * 10**9
    assert default_size(available=100 * 10**9, cpus=2) == 2 * 512 * 10**6
    assert default_size(available=10**9, cpus=8) == 512 * 10**6


def test_from_json_reports_a_file_saved_by_an_older_version(compare: ModuleType, tmp_path: Path) -> None:
    old_run = {"seconds": 1.0, "samples": 1000, "nbytes": 10**6, "peak_rss": 10**8, "first_batch_s": 0.1}
    new_run = {**old_run, "first_epoch_s": 4.0, "first_epoch_samples": 1000}

    def row(key: str, family: str, workers: int | None, run: dict[str, object]) -> dict[str, object]:
        return {"key": key, "family": family, "system": family, "group": "limit", "workers": workers,
                "batch_size": None, "samples_per_s": 1000.0, "first_batch_s": 0.1, "steady_samples_per_s": 1100.0,
                "rounds": 1, "runs": [run]}

    saved = tmp_path / "old.json"
    saved.write_text(json.dumps({
        "format": compare.JSON_FORMAT, "meta": {"config": {"workers": [0]}}, "scaling": None, "targets": [],
        "systems": [row("cached/w0/b64", "cached", 0, old_run), row("parquet/w0/b64", "parquet", 0, new_run)],
    }))
    doc = compare._reload(saved)
    rows = {r["key"]: r for r in doc["systems"]}
    assert all("steady_samples_per_s" not in r for r in rows.values())
    assert rows["cached/w0/b64"]["first_epoch_samples_per_s"] is None
    assert rows["parquet/w0/b64"]["first_epoch_samples_per_s"] == pytest.approx(250.0)
    # An older version read every loader unshuffled: marked so, and the shuffled targets have no figure.
    assert rows["cached/w0/b64"]["shuffle"] is False
    assert rows["parquet/w0/b64"]["shuffle"] is False
    targets = {t["name"]: t for t in doc["targets"]}
    assert targets["shuffled CachedDataLoader / bare GET loop (workers=0)"]["status"] == "SKIP"


def test_shuffled_against_unshuffled_pairs_the_runs_of_each_round(compare: ModuleType) -> None:
    from comparison.rounds import Outcome, System

    report = _report(compare)

    def outcome(shuffle: bool, rates: list[float]) -> object:
        mode = "shuffled" if shuffle else "unshuffled"
        system = System(key=f"cached/w0/b64/{mode}", family="cached", name="cached", group="shardcache", spec={},
                        python="python", workers=0, batch_size=64, shuffle=shuffle)
        return Outcome(system, runs=[{"seconds": 1000 / r, "samples": 1000, "nbytes": 1000} for r in rates])

    # Medians 90 and 110 (0.82x), but round by round 0.91x, 1.00x and 0.45x (a busy third round).
    rows = report.build_rows([outcome(True, [100, 60, 90]), outcome(False, [110, 60, 200])], sample_bytes=1000)
    target = next(t for t in report.build_targets(rows, workers=[0], scaling=None)
                  if t.name == "CachedDataLoader shuffled / unshuffled (workers=0)")
    assert target.value == pytest.approx(100 / 110)
    assert target.status == "MISS"
    assert "paired per round, per batch size: b=64 0.91x" in target.detail
