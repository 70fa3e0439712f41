"""shardcache against what users would pick instead, on the same data, in one run.

    python benchmarks/compare.py                      # full run, dataset sized to the machine
    python benchmarks/compare.py --quick --no-peers   # seconds: tiny dataset, for tests
    python benchmarks/compare.py --scaling --json-out bench-out/compare.json --chart docs/performance.png

It writes the dataset once (Parquet on local disk, MDS, LitData, and into a moto S3
server), starts a local 3-primary Redis Cluster and prefetches the dataset into it,
then runs every system round by round in fresh processes (a warm-up round first) and
prints medians, ratios and the issue's targets (PASS/MISS). ``shardcache bench``
runs :func:`main`.

Every loader is measured both ways. Shuffled reads are the headline, since training shuffles: the
first table, the targets and the chart's first bars; each shuffled run also reports how well it
shuffled (the mean move of a sample, the source shards a batch mixes), so that speed is never
bought with a worse shuffle. See ``comparison/systems.py`` for each system's shuffle settings.

Each run of a DataLoader-based system builds one loader with persistent workers and
iterates it twice: the figures are those of the warm second epoch, as the bare GET
loop's clock leaves out its own start-up and a training job pays start-up once. The
cold first epoch (building the loader, worker start-up, connections, the first shards)
is reported too: time to first batch and first-epoch samples/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # run as a script or loaded by path from `shardcache bench`
    sys.path.insert(0, str(_HERE))

import psutil  # noqa: E402
from comparison.config import (  # noqa: E402
    REPO_ROOT,
    BenchConfig,
    default_size,
    parse_ints,
    parse_shape,
    peers_decision,
)
from comparison.dataset import Dataset, accept, generate  # noqa: E402
from comparison.peers import Peers, ensure_peers  # noqa: E402
from comparison.profile import find_py_spy, summarize, wrap  # noqa: E402
from comparison.random_access import budget_of, render_random_access, run_random_access  # noqa: E402
from comparison.report import (  # noqa: E402
    SHUFFLED_FAMILIES,
    Row,
    Target,
    build_rows,
    build_targets,
    first_epoch_rate,
    render_quality,
    render_table,
    render_targets,
    rows_as_json,
    split_rows,
    write_chart,
)
from comparison.rounds import System, run_child, run_rounds  # noqa: E402
from comparison.scaling import render_scaling, run_scaling  # noqa: E402
from comparison.services import (  # noqa: E402
    S3Endpoint,
    describe_server,
    moto_s3,
    preferred_server,
    redis_cluster,
    upload,
)
from comparison.systems import NAMES, Context, build_systems  # noqa: E402

from shardcache.cache import connect  # noqa: E402
from shardcache.errors import ConfigError, ShardCacheError  # noqa: E402
from shardcache.localcluster import find_server_binary  # noqa: E402
from shardcache.units import parse_size  # noqa: E402

__all__ = ["main", "run"]

JSON_FORMAT = 1
CACHED_NAME = "bench-main"
QUICK = {"size": "16MiB", "image_shape": "3x64x64", "shard_size": "1MiB", "batch_sizes": "64", "rounds": 1,
         "warmup": 0, "scaling_base": "4MiB"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="compare.py",
        description="Benchmark shardcache's CachedDataLoader and prefetch against the machine's limits and the "
                    "loaders users would pick instead, on the same data in one run, shuffled (the headline) and "
                    "unshuffled. DataLoader-based systems are "
                    "measured on a warm epoch (persistent workers) after a cold first epoch, which is reported "
                    "too (time to first batch, first-epoch samples/s).",
    )
    p.add_argument("--size", help="dataset size, e.g. 1GB (default: 512 MB-2 GB, a sixth of available memory; "
                                  "--quick: 16MiB)")
    p.add_argument("--image-shape", help="shape of the uint8 image of one sample (default 3x224x224; --quick: 3x64x64)")
    p.add_argument("--shard-size", help="shard size for shardcache, MDS and LitData (default 4MiB; --quick: 1MiB)")
    p.add_argument("--workers", default="0,2", help="DataLoader num_workers values (default 0,2)")
    p.add_argument("--batch-sizes", help="batch sizes (default 64,256; --quick: 64)")
    p.add_argument("--rounds", type=int, help="measured rounds; medians are taken over them (default 3; --quick: 1)")
    p.add_argument("--warmup", type=int, help="warm-up rounds, not counted (default 1; --quick: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    p.add_argument("--data", type=Path, help="use these Parquet files (columns image: fixed_size_binary, label: int) "
                                             "instead of a synthetic dataset")
    p.add_argument("--systems", help="only these, comma-separated: memcpy,tcp,get,handloop,cached,parquet,mds,"
                                     "litdata,s3,prefetch,set")
    p.add_argument("--quick", action="store_true", help="a tiny dataset and one round, for tests (seconds)")
    p.add_argument("--no-peers", action="store_true",
                   help="skip MosaicML Streaming and LitData (always skipped when CI=true)")
    p.add_argument("--peers-venv", type=Path, default=REPO_ROOT / ".venv-peers",
                   help="the peers virtualenv, created on first use (default .venv-peers)")
    p.add_argument("--scaling", action="store_true", help="also run dataset x1/x2/x4 and shard size 1/4/8 MiB")
    p.add_argument("--scaling-base", help="dataset size of the scaling run's x1 (default 512MiB; --quick: 4MiB)")
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench-out" / "compare",
                   help="where datasets and the cluster live (default bench-out/compare; reused across runs)")
    p.add_argument("--json-out", type=Path, help="write the results as JSON here")
    p.add_argument("--chart", type=Path, help="write a PNG chart of samples/s per system here")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for the README)")
    p.add_argument("--from-json", type=Path, metavar="JSON",
                   help="measure nothing: report a saved --json-out file again (table, targets judged by this "
                        "version, --chart, --markdown, --json-out)")
    p.add_argument("--fail-on-miss", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="record the measured runs of --profile-systems with py-spy into DIR, and summarise where "
                        "the time goes (DIR/summary.txt)")
    p.add_argument("--profile-systems", default="cached", help="systems --profile records (default cached)")
    p.add_argument("--random-access", nargs="?", const="auto", metavar="BUDGET",
                   help="also measure random access: CachedMapDataset against the streaming CachedDataLoader and "
                        "Parquet read by row group, with an LRU of BUDGET (default auto: a quarter of the dataset)")
    p.add_argument("--child-timeout", type=float, default=900.0, help="seconds one measured run may take")
    p.add_argument("--server-bin", help="the redis-server or valkey-server of the benchmark's cluster (default: "
                                        "valkey-server 9 or later when installed, else what `shardcache up` runs)")
    return p.parse_args(argv)


def build_config(ns: argparse.Namespace) -> BenchConfig:
    quick = QUICK if ns.quick else {}

    def pick(name: str, default: Any) -> Any:
        value = getattr(ns, name)
        return value if value is not None else quick.get(name, default)

    shape = parse_shape(pick("image_shape", "3x224x224"))
    size_arg = pick("size", None)
    size = default_size() if size_arg is None else parse_size(size_arg, name="--size")
    peers, reason = peers_decision(no_peers=ns.no_peers)
    systems = None
    if ns.systems:
        systems = frozenset(s.strip() for s in ns.systems.split(",") if s.strip())
        unknown = systems - set(NAMES)
        if unknown:
            raise ConfigError(f"--systems {ns.systems!r} names unknown systems {sorted(unknown)}")
    return BenchConfig(
        workdir=ns.workdir.absolute(),
        size=size,
        image_shape=shape,
        shard_size=parse_size(pick("shard_size", "4MiB"), name="--shard-size"),
        workers=parse_ints(ns.workers, name="--workers", minimum=0),
        batch_sizes=parse_ints(pick("batch_sizes", "64,256"), name="--batch-sizes", minimum=1),
        rounds=pick("rounds", 3),
        warmup=pick("warmup", 1),
        seed=ns.seed,
        data=ns.data,
        peers=peers,
        peers_reason=reason,
        peers_venv=ns.peers_venv.absolute(),
        systems=systems,
        scaling=ns.scaling,
        scaling_base=parse_size(pick("scaling_base", "512MiB"), name="--scaling-base"),
        quick=ns.quick,
        child_timeout=ns.child_timeout,
        server_bin=ns.server_bin,
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("shardcache", "torch", "pyarrow", "redis", "hiredis", "numpy", "moto"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _prepare_dataset(cfg: BenchConfig, say: Callable[[str], None]) -> Dataset:
    began = time.monotonic()
    if cfg.data is not None:
        ds = accept(path=cfg.data, workdir=cfg.workdir / "data", image_shape=cfg.image_shape)
    else:
        ds = generate(workdir=cfg.workdir / "data", rows=cfg.rows, image_shape=cfg.image_shape, seed=cfg.seed)
    say(f"dataset: {ds.rows:,} samples of {'x'.join(map(str, ds.image_shape))} uint8 + label, "
        f"{ds.tensor_bytes / 1e6:,.0f} MB in {len(ds.parquet_files)} Parquet files ({time.monotonic() - began:.1f}s)")
    return ds


def _prepare_peers(
    cfg: BenchConfig, ds: Dataset, say: Callable[[str], None]
) -> tuple[Peers | None, str, dict[str, Path]]:
    """The peers interpreter and the MDS / LitData copies of the dataset (written once, then reused)."""
    if not cfg.peers or not (cfg.wants("mds") or cfg.wants("litdata")):
        return None, cfg.peers_reason or "not selected", {}
    try:
        peers = ensure_peers(cfg.peers_venv, say=say)
    except (RuntimeError, OSError) as exc:
        return None, f"peers virtualenv unavailable: {exc}", {}
    dirs: dict[str, Path] = {}
    for family, module, writer in (("mds", "streaming", "mds-write"), ("litdata", "litdata", "litdata-write")):
        if not cfg.wants(family) or peers.problem(module):
            continue
        out = ds.root / f"{family}-{cfg.shard_size >> 10}k"
        if not out.exists():
            say(f"writing the dataset as {family} shards of {cfg.shard_size >> 10} KiB")
            try:
                run_child(str(peers.python), "comparison.peer_child", {
                    "system": writer, "raw_dir": str(ds.raw_dir), "shape": list(ds.image_shape), "out": str(out),
                    "shard_size": cfg.shard_size}, timeout=cfg.child_timeout)
            except RuntimeError as exc:
                say(f"  could not write {family}: {exc}")
                continue
        dirs[family] = out
    return peers, "", dirs


def _cluster_memory(cfg: BenchConfig, ds: Dataset) -> int:
    """Per-node maxmemory: the cached dataset, one prefetch or SET round at a time, and the scaling x4."""
    need = int(ds.tensor_bytes * 2.4)
    if cfg.scaling:
        need += int(cfg.scaling_base * 4 * 1.2)
    return need // 3 + 128 * 1024 * 1024


def _profiler(
    profile: Path | None, families: frozenset[str]
) -> Callable[[System, int], Callable[[list[str]], list[str]] | None] | None:
    """Per run, the py-spy wrapper of ``--profile`` (measured rounds of the chosen systems only)."""
    if profile is None:
        return None
    py_spy = find_py_spy()
    if py_spy is None:
        raise ConfigError("--profile needs py-spy: pip install py-spy (it is in shardcache[bench])")
    profile = profile.absolute()  # children run in benchmarks/
    profile.mkdir(parents=True, exist_ok=True)

    def choose(system: System, round_: int) -> Callable[[list[str]], list[str]] | None:
        if system.family not in families:
            return None
        out = profile / f"{system.key.replace('/', '-')}-round{round_}.txt"
        return lambda argv: wrap(argv, py_spy=py_spy, out=out)

    return choose


def _fill_cache(cfg: BenchConfig, ds: Dataset, url: str, say: Callable[[str], None]) -> tuple[Path, tuple[int, ...]]:
    """Prefetch the dataset for the loaders; write its shard keys (for the bare GET loop) to a file.
    Returns the file and the rows of each shard."""
    began = time.monotonic()
    run_child(sys.executable, "comparison.child", {
        "system": "prefetch", "source": str(ds.parquet_dir), "url": url, "dataset": CACHED_NAME,
        "shard_size": cfg.shard_size, "keep": True}, timeout=cfg.child_timeout)
    with connect(url) as cache:
        manifest = cache.manifest(CACHED_NAME)
        shards = [[cache.keys.chunk(s.key, c) for c in range(max(s.chunks, 1))] for s in manifest.shards]
    keys_file = cfg.workdir / "keys.json"
    doc = {"rows": manifest.num_rows, "shards": shards, "keys": [k for chunks in shards for k in chunks]}
    keys_file.write_text(json.dumps(doc))
    say(f"  prefetched into {url}: {manifest.num_shards} shards, {manifest.nbytes / 1e6:,.0f} MB "
        f"({time.monotonic() - began:.1f}s)")
    return keys_file, tuple(s.rows for s in manifest.shards)


def _summarize_profiles(profile: Path, systems: Sequence[System], say: Callable[[str], None]) -> None:
    for system in systems:
        stem = system.key.replace("/", "-")
        files = sorted(profile.glob(f"{stem}-round*.txt"))
        if files:
            text = f"== {system.key} ({len(files)} runs, py-spy, 100 Hz, waits included)\n{summarize(files)}\n"
            (profile / f"{stem}-summary.txt").write_text(text)
            say(text)


def _steal_share(before: Any, after: Any) -> float | None:
    """The share of CPU time the hypervisor gave to other guests between two ``psutil.cpu_times()``
    (Linux's steal time), or None where it is not reported: on a VM, a loader that needs both cores
    (its reads and the Redis servers beside it) loses more to steal than one that needs one."""
    if not hasattr(before, "steal"):
        return None
    def busy_and_idle(t: Any) -> float:  # guest time is already counted in user time
        return sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    total = busy_and_idle(after) - busy_and_idle(before)
    return (after.steal - before.steal) / total if total > 0 else None


def run(cfg: BenchConfig, *, say: Callable[[str], None] = _say, argv: Sequence[str] = (),
        profile: Path | None = None, profile_systems: frozenset[str] = frozenset({"cached"}),
        random_access: str | None = None) -> dict[str, Any]:
    """Run the whole benchmark; returns the JSON document (see ``--json-out``)."""
    profiler = _profiler(profile, profile_systems)
    profile = None if profile is None else profile.absolute()
    started = datetime.now(timezone.utc)
    load_start = os.getloadavg()
    ds = _prepare_dataset(cfg, say)
    peers, peers_reason, peer_dirs = _prepare_peers(cfg, ds, say)
    server_bin = find_server_binary(server_bin=cfg.server_bin) if cfg.server_bin else preferred_server()
    server = describe_server(server_bin)
    with ExitStack() as stack:
        also = " and a moto S3 server" if cfg.wants("s3") else ""
        say(f"starting a local 3-primary Redis Cluster ({server}){also}")
        cluster = stack.enter_context(
            redis_cluster(workdir=cfg.workdir, maxmemory=_cluster_memory(cfg, ds), server_bin=server_bin)
        )
        s3: S3Endpoint | None = None
        s3_files: list[str] = []
        if cfg.wants("s3"):
            s3 = stack.enter_context(moto_s3())
            began = time.monotonic()
            s3_files = upload(s3, ds.parquet_files, prefix="parquet")
            say(f"  uploaded {len(s3_files)} Parquet files to moto S3 in {time.monotonic() - began:.1f}s")
        keys_file, shard_rows = _fill_cache(cfg, ds, cluster.url, say)
        ctx = Context(
            config=cfg, dataset=ds, url=cluster.url, host=cluster.host, port=cluster.nodes[0].port,
            cached_name=CACHED_NAME, keys_file=keys_file, s3=s3, s3_files=tuple(s3_files), peers=peers,
            peers_reason=peers_reason, mds_dir=peer_dirs.get("mds"), litdata_dir=peer_dirs.get("litdata"),
            shard_rows=shard_rows,
        )
        systems, skipped = build_systems(ctx)
        say(f"measuring {len(systems)} systems: {cfg.warmup} warm-up + {cfg.rounds} rounds, alternating")
        cpu_before = psutil.cpu_times()
        outcomes = run_rounds(systems, rounds=cfg.rounds, warmup=cfg.warmup, timeout=cfg.child_timeout, say=say,
                              wrap=profiler)
        steal = _steal_share(cpu_before, psutil.cpu_times())
        random_rows = None if random_access is None else run_random_access(
            url=cluster.url, dataset=CACHED_NAME, files=[str(f) for f in ds.parquet_files], workers=cfg.workers,
            budget=budget_of(random_access, dataset_bytes=ds.tensor_bytes), rounds=cfg.rounds,
            warmup_rounds=cfg.warmup, timeout=cfg.child_timeout, say=say, dataset_rows=ds.rows)
        if profile is not None:
            _summarize_profiles(profile, systems, say)
        scaling = None
        if cfg.scaling:
            with connect(cluster.url) as cache:
                cache.delete(CACHED_NAME, force=True)  # room for the x4 dataset
            scaling = run_scaling(ctx, say=say)
    rows = build_rows([*outcomes, *skipped], sample_bytes=ds.sample_bytes + 8)
    targets = build_targets(rows, workers=cfg.workers, scaling=scaling)
    return {
        "format": JSON_FORMAT,
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "seconds": (datetime.now(timezone.utc) - started).total_seconds(),
            "command": "python benchmarks/compare.py " + " ".join(argv),
            "machine": {
                "platform": platform.platform(), "python": platform.python_version(),
                "cpus": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
                "load_avg_start": load_start, "load_avg_end": os.getloadavg(), "steal_share": steal,
            },
            "versions": {**_versions(), "mosaicml-streaming": peers.version("streaming") if peers else None,
                         "litdata": peers.version("litdata") if peers else None,
                         "torch (peers)": peers.version("torch") if peers else None},
            "dataset": ds.describe(),
            "config": {
                "shard_size": cfg.shard_size, "workers": list(cfg.workers), "batch_sizes": list(cfg.batch_sizes),
                "rounds": cfg.rounds, "warmup": cfg.warmup, "quick": cfg.quick, "peers": peers is not None,
                "peers_note": peers_reason or None,
                "redis": f"LocalCluster of {server}, 3 primaries, no replicas, noeviction",
            },
        },
        "systems": rows_as_json(rows),
        "targets": [vars(t) for t in targets],
        "scaling": scaling,
        **({"random_access": random_rows} if random_rows is not None else {}),
    }


def render(doc: dict[str, Any], *, markdown: bool = False) -> str:
    """The stdout report: the systems table, the targets and the scaling table."""
    rows = [Row(**r) for r in doc["systems"]]
    shuffled, unshuffled, writes = split_rows(rows)
    targets = [Target(**t) for t in doc["targets"]]
    meta = doc["meta"]
    ds = meta["dataset"]
    load = ", ".join(f"{x:.1f}" for x in meta["machine"]["load_avg_start"])
    if meta["machine"].get("steal_share") is not None:
        load += f"; CPU steal during the rounds {meta['machine']['steal_share']:.1%}"
    lines = [
        f"dataset: {ds['rows']:,} samples x {ds['sample_bytes']:,} B = {ds['bytes'] / 1e6:,.0f} MB; "
        f"shards {meta['config']['shard_size'] >> 10} KiB; medians of {meta['config']['rounds']} rounds "
        f"after {meta['config']['warmup']} warm-up; {meta['machine']['cpus']} CPUs, load average at start {load}",
        f"cache: {meta['config'].get('redis', 'a local Redis Cluster')}",
        "shardcache x = CachedDataLoader read the same way (same workers and batch, else its best) / this row; "
        "references: the shuffled CachedDataLoader; for writes, prefetch / this row",
        "shuffled: CachedDataLoader shuffle=True (window of 4 shards' worth, rounded up to the batch); Parquet: "
        "row groups in a new order each epoch through a shuffle buffer of as many samples as that window, "
        "per worker; MosaicML Streaming shuffle=True (py1e, its default block size); LitData shuffle=True",
        "mean move = mean |delivered position - source position| / samples in the first epoch (uniform "
        "shuffle ~0.333, none 0); shards/batch = distinct source shards (the cache's mean rows per shard, "
        "consecutive) a batch mixes",
        "samples/s of DataLoader systems = their warm second epoch (persistent workers); 1st epoch samples/s and "
        "1st batch s = the cold first epoch, from building the loader (worker start-up, connections, first shards)",
        "peak RSS = proportional set size summed over the process and its DataLoader workers (shared pages once), "
        "each run in a fresh process",
    ]
    for title, part in (("shuffled reads, the headline (what training runs), with the references:", shuffled),
                        ("unshuffled reads:", unshuffled), ("writes:", writes)):
        if part:
            lines += ["", title, render_table(part, markdown=markdown)]
    lines += [
        "",
        "shuffle quality (first epoch):",
        render_quality(rows) or "  (no shuffled run measured it)",
        "",
        "targets (ratios measured in this run, shuffled reads):",
        render_targets(targets, markdown=markdown),
    ]
    if doc.get("scaling"):
        lines += ["", "scaling (CachedDataLoader, fresh process per run, warm epoch):", render_scaling(doc["scaling"])]
    if doc.get("random_access"):
        lines += ["", render_random_access(doc["random_access"])]
    return "\n".join(lines)


def _reload(path: Path) -> dict[str, Any]:
    """A saved run, its targets judged again by this version of the report.

    Rows saved by older versions lose the fields this version no longer has (``steady_samples_per_s``);
    ``first_epoch_samples_per_s`` is filled from the runs where they carry ``first_epoch_s``, else None.
    Loaders of a version that read them unshuffled only are marked so (``shuffle: false``).
    """
    doc: dict[str, Any] = json.loads(path.read_text())
    if doc.get("format") != JSON_FORMAT:
        raise ConfigError(f"--from-json {str(path)!r} is not a format-{JSON_FORMAT} result of compare.py --json-out")
    for r in doc["systems"]:
        r["system"] = NAMES.get(r["family"], r["system"])  # labels as this version shows them
        if "shuffle" not in r:
            r["shuffle"] = False if r["family"] in SHUFFLED_FAMILIES else None
    known = {f.name for f in dataclasses.fields(Row)}
    rows = [Row(**{k: v for k, v in r.items() if k in known}) for r in doc["systems"]]
    for row in rows:
        if row.first_epoch_samples_per_s is None:  # saved by a version without it
            row.first_epoch_samples_per_s = first_epoch_rate(row.runs)
    doc["systems"] = rows_as_json(rows)
    doc["targets"] = [vars(t) for t in build_targets(rows, workers=doc["meta"]["config"]["workers"],
                                                      scaling=doc["scaling"])]
    return doc


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python benchmarks/compare.py`` and ``shardcache bench``; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    ns = parse_args(args)
    try:
        if ns.from_json is not None:
            doc = _reload(ns.from_json)
        else:
            cfg = build_config(ns)
            profile_systems = frozenset(s.strip() for s in ns.profile_systems.split(",") if s.strip())
            doc = run(cfg, argv=args, profile=ns.profile, profile_systems=profile_systems,
                      random_access=ns.random_access)
    except (ShardCacheError, RuntimeError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(doc, markdown=ns.markdown))
    if ns.json_out:
        ns.json_out.parent.mkdir(parents=True, exist_ok=True)
        ns.json_out.write_text(json.dumps(doc, indent=2))
    if ns.chart:
        meta = doc["meta"]
        title = (f"{meta['dataset']['rows']:,} samples of {'x'.join(map(str, meta['dataset']['image_shape']))} uint8, "
                 f"{meta['dataset']['bytes'] / 1e6:,.0f} MB; {meta['machine']['cpus']} CPUs; median of "
                 f"{meta['config']['rounds']} rounds")
        write_chart([Row(**r) for r in doc["systems"]], ns.chart, title=title)
    missed = [t for t in doc["targets"] if t["status"] == "MISS"]
    return 1 if ns.fail_on_miss and missed else 0


if __name__ == "__main__":
    sys.exit(main())
