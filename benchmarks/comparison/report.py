"""The results of a run: rows, ratios, the targets (PASS/MISS), the table, the JSON and the chart.

Ratios are always measured in the same run. The ``shardcache x`` column divides
shardcache's figure by the row's: ``CachedDataLoader`` (same workers and batch size
where that row has them, else its best) for read systems, ``prefetch`` for writes.
The samples/s of a DataLoader-based system are those of its warm epoch (persistent
workers, start-up already paid, like the bare GET loop's clock); its cold first epoch,
from building the loader on, has a column of its own.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .rounds import Outcome, headline

__all__ = ["Row", "Target", "build_rows", "build_targets", "first_epoch_rate", "render_quality", "render_table",
           "render_targets", "split_rows", "write_chart"]

READ_FAMILIES = ("memcpy", "tcp", "get", "handloop", "cached", "parquet", "mds", "litdata", "s3")
SHUFFLED_FAMILIES = ("cached", "parquet", "mds", "litdata", "s3")  # loaders measured both ways
WRITE_FAMILIES = ("prefetch", "set")
RSS_TOLERANCE = 1.10  # "no growth": within 10%, the noise between runs of the same size


@dataclass
class Row:
    key: str
    family: str
    system: str
    group: str
    workers: int | None
    batch_size: int | None
    mb_per_s: float | None = None
    samples_per_s: float | None = None
    first_batch_s: float | None = None
    # Samples/s of the cold first epoch: building the loader, worker start-up, connections, the first shards.
    first_epoch_samples_per_s: float | None = None
    peak_rss_mb: float | None = None
    rounds: int = 0
    shardcache_ratio: float | None = None
    status: str = "ok"  # ok | failed | skipped
    note: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)
    shuffle: bool | None = None  # None: a reference, which has no order to shuffle
    # Medians over the runs of the shuffle's quality (see quality.py): mean_move, shards_per_batch, unmatched.
    quality: dict[str, float] | None = None


def build_rows(outcomes: Iterable[Outcome], *, sample_bytes: int) -> list[Row]:
    rows = []
    for o in outcomes:
        s = o.system
        row = Row(key=s.key, family=s.family, system=s.name, group=s.group, workers=s.workers,
                  batch_size=s.batch_size, rounds=len(o.runs), runs=list(o.runs), shuffle=s.shuffle)
        if o.skipped:
            row.status, row.note = "skipped", o.skipped
        elif o.error and not o.runs:
            row.status, row.note = "failed", headline(o.error)[:300]
        if o.runs:
            bps = o.median("nbytes")
            row.mb_per_s = None if bps is None else bps / 1e6
            sps = o.median("samples")
            # References move bytes, not samples: count how many samples those bytes would hold.
            row.samples_per_s = sps if sps is not None else (None if bps is None else bps / sample_bytes)
            row.first_batch_s = o.median("first_batch_s")
            row.first_epoch_samples_per_s = first_epoch_rate(o.runs)
            rss = o.median("peak_rss")
            row.peak_rss_mb = None if rss is None else rss / 1e6
            row.quality = _quality(o.runs)
            notes = list(o.notes) + ([headline(o.error)[:200]] if o.error else [])
            row.note = "; ".join(notes)
        rows.append(row)
    _fill_ratios(rows)
    return rows


def first_epoch_rate(runs: Sequence[dict[str, Any]]) -> float | None:
    """Median samples/s of the cold first epoch over the runs that report one (DataLoader-based systems)."""
    rates = [r["first_epoch_samples"] / r["first_epoch_s"] for r in runs
             if r.get("first_epoch_samples") and r.get("first_epoch_s")]
    return statistics.median(rates) if rates else None


def _quality(runs: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """Per metric, the median over the runs that measured the shuffle's quality."""
    measured = [r["quality"] for r in runs if r.get("quality")]
    if not measured:
        return None
    return {k: statistics.median(q[k] for q in measured if k in q) for k in measured[0]}


def _best(rows: Iterable[Row], **match: Any) -> Row | None:
    found = [r for r in rows if r.samples_per_s and all(getattr(r, k) == v for k, v in match.items())]
    return max(found, key=lambda r: r.samples_per_s or 0.0, default=None)


def _fill_ratios(rows: list[Row]) -> None:
    for row in rows:
        if not row.samples_per_s:
            continue
        if row.family in WRITE_FAMILIES:
            ref = _best(rows, family="prefetch")
        else:
            # A loader against CachedDataLoader read the same way; a reference against the shuffled headline.
            mode = True if row.shuffle is None else row.shuffle
            ref = (_best(rows, family="cached", workers=row.workers, batch_size=row.batch_size, shuffle=mode)
                   or (_best(rows, family="cached", workers=row.workers, shuffle=mode)
                       if row.workers is not None else None)
                   or _best(rows, family="cached", shuffle=mode))
        if ref is not None and ref.samples_per_s:
            row.shardcache_ratio = ref.samples_per_s / row.samples_per_s


@dataclass
class Target:
    name: str
    value: float | None
    threshold: float
    higher_is_better: bool = True
    status: str = "SKIP"  # PASS | MISS | SKIP | INFO
    detail: str = ""
    # The same ratio for a reference. "ceiling": the fastest bare GET loop, the ceiling of any
    # Redis-based loader; below the goal, no such loader can meet the target on this machine.
    # "hand loop": the minimal hand-written DataLoader loop, what passing batches through torch's
    # DataLoader (and its worker processes) leaves of the bare GET loop.
    ceiling: float | None = None
    ceiling_kind: str = "ceiling"

    def judge(self) -> Target:
        if self.status == "INFO" or self.value is None:
            return self
        ok = self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold
        self.status = "PASS" if ok else "MISS"
        return self


def _ratio(a: Row | None, b: Row | None) -> float | None:
    if a is None or b is None or not a.samples_per_s or not b.samples_per_s:
        return None
    return a.samples_per_s / b.samples_per_s


def _paired(a: Row, b: Row | None) -> float | None:
    """Median over rounds of a's samples/s over b's in the same round; the ratio of medians when the
    rounds do not pair up (a failed run)."""
    if b is None or not a.samples_per_s or not b.samples_per_s:
        return None
    if len(a.runs) != len(b.runs) or not a.runs:
        return a.samples_per_s / b.samples_per_s
    ratios = [(x["samples"] / x["seconds"]) / (y["samples"] / y["seconds"]) for x, y in zip(a.runs, b.runs, strict=True)
              if x.get("seconds") and y.get("seconds") and y.get("samples")]
    return statistics.median(ratios) if ratios else a.samples_per_s / b.samples_per_s


def _label(row: Row | None) -> str:
    if row is None:
        return "(not measured)"
    parts = [f"w={row.workers}" if row.workers is not None else "", f"b={row.batch_size}" if row.batch_size else "",
             "" if row.shuffle is None else ("shuffled" if row.shuffle else "unshuffled")]
    return f"{row.system} {' '.join(p for p in parts if p)}".strip()


def _why_missing(rows: Sequence[Row], family: str) -> str:
    notes = [r.note for r in rows if r.family == family and r.note]
    return f"{family}: {notes[0]}" if notes else f"{family} was not measured"


def _detail(rows: Sequence[Row], a: Row | None, b: Row | None, fa: str, fb: str, *, same: str = "") -> str:
    """``"X w=0 b=256 vs Y w=2 b=256"``, or why one side has no figure."""
    if a is None or b is None:
        return "; ".join(_why_missing(rows, f) for f, r in ((fa, a), (fb, b)) if r is None)
    return same or f"{_label(a)} vs {_label(b)}"


def build_targets(rows: Sequence[Row], *, workers: Sequence[int], scaling: Mapping[str, Any] | None) -> list[Target]:
    """The issue's targets, on shuffled reads (what training runs), each judged PASS or MISS, or SKIP
    with the reason."""
    targets = []
    for w in workers:
        cached, get = _best(rows, family="cached", workers=w, shuffle=True), _best(rows, family="get", workers=w)
        # Here the ceiling is the minimal hand-written DataLoader loop: what passing batches through
        # torch's DataLoader (and its worker processes) leaves of the bare GET loop.
        hand = _best(rows, family="handloop", workers=w)
        detail = _detail(rows, cached, get, "cached", "get")
        targets.append(Target(f"shuffled CachedDataLoader / bare GET loop (workers={w})", _ratio(cached, get), 0.8,
                              detail=detail, ceiling=_ratio(hand, get), ceiling_kind="hand loop"))
    for w in workers:
        # Per batch size, the median over rounds of the ratio of the two runs of the same round (neighbours
        # in it, see systems.py); the lowest of them is judged.
        pairs = []
        for r in rows:
            if r.family == "cached" and r.workers == w and r.shuffle and r.samples_per_s:
                plain = _best(rows, family="cached", workers=w, batch_size=r.batch_size, shuffle=False)
                ratio = _paired(r, plain)
                if ratio is not None:
                    pairs.append((ratio, f"b={r.batch_size} {ratio:.2f}x"))
        detail = ("paired per round, per batch size: " + ", ".join(text for _, text in pairs) if pairs
                  else _why_missing(rows, "cached"))
        targets.append(Target(f"CachedDataLoader shuffled / unshuffled (workers={w})",
                              min(pairs)[0] if pairs else None, 0.95, detail=detail))
    for w in workers:
        if w == 0:
            continue
        cached, get = _best(rows, family="cached", workers=w, shuffle=True), _best(rows, family="get", workers=w)
        cold = None
        if cached is not None and get is not None and cached.first_epoch_samples_per_s and get.samples_per_s:
            # The GET loop's clock starts once its processes are up and connected; the loader's cold first
            # epoch counts building it, worker start-up, connections and the first shards.
            cold = cached.first_epoch_samples_per_s / get.samples_per_s
        targets.append(Target(f"shuffled CachedDataLoader cold first epoch / bare GET loop (workers={w})", cold, 0.8,
                              detail=_detail(rows, cached, get, "cached", "get")
                              + "; first epoch from building the loader"))
    best, ceiling = _best(rows, family="cached", shuffle=True), _best(rows, family="get")
    for family, name, threshold in (
        ("parquet", "plain Parquet DataLoader (local disk)", 1.3),
        ("mds", "MosaicML Streaming (local disk)", 2.0),
        ("litdata", "LitData (local disk)", 1.5),
        ("s3", "direct S3, no cache", 5.0),
    ):
        other = _best(rows, family=family, shuffle=True)
        targets.append(Target(f"shuffled CachedDataLoader / shuffled {name}", _ratio(best, other), threshold,
                              detail=_detail(rows, best, other, "cached", family), ceiling=_ratio(ceiling, other)))
    prefetch, bare_set = _best(rows, family="prefetch"), _best(rows, family="set")
    targets.append(Target("prefetch / bare SET loop", _ratio(prefetch, bare_set), 0.7,
                          detail=_detail(rows, prefetch, bare_set, "prefetch", "set", same="same bytes written")))
    growth = None if scaling is None else scaling.get("rss_growth_x4")
    targets.append(Target(
        "loader peak RSS, dataset x4 / x1", growth, RSS_TOLERANCE, higher_is_better=False,
        detail="no growth (within 10%)" if scaling is not None else "run with --scaling",
    ))
    return [t.judge() for t in targets]


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def render_table(rows: Sequence[Row], *, markdown: bool = False) -> str:
    """The results table (fixed-width text, or Markdown for the README)."""
    head = ["system", "workers", "batch", "MB/s", "samples/s", "1st epoch samples/s", "1st batch s", "peak RSS MB",
            "shardcache x", "mean move", "shards/batch"]
    body = []
    for r in rows:
        q = r.quality or {}
        cells = [
            r.system + (f" [{r.status}: {r.note}]" if r.status != "ok" else (f" [{r.note}]" if r.note else "")),
            "-" if r.workers is None else str(r.workers),
            "-" if r.batch_size is None else str(r.batch_size),
            _fmt(r.mb_per_s, ",.0f"),
            _fmt(r.samples_per_s, ",.0f"),
            _fmt(r.first_epoch_samples_per_s, ",.0f"),
            _fmt(r.first_batch_s, ".3f"),
            _fmt(r.peak_rss_mb, ",.0f"),
            _fmt(r.shardcache_ratio, ".2f"),
            _fmt(q.get("mean_move"), ".3f"),
            _fmt(q.get("shards_per_batch"), ".1f"),
        ]
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    widths[0] = min(widths[0], 90)
    out = []
    for cells in [head, *body]:
        first = cells[0] if len(cells[0]) <= widths[0] else cells[0][: widths[0] - 3] + "..."
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        out.append("  ".join([first.ljust(widths[0]), *rest]))
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def split_rows(rows: Sequence[Row]) -> tuple[list[Row], list[Row], list[Row]]:
    """The shuffled loaders with the read references (the headline table), the unshuffled loaders, and
    the writes."""
    reads = [r for r in rows if r.family in READ_FAMILIES]
    shuffled = [r for r in reads if r.shuffle is not False]
    unshuffled = [r for r in reads if r.shuffle is False]
    writes = [r for r in rows if r.family not in READ_FAMILIES]
    return shuffled, unshuffled, writes


def render_quality(rows: Sequence[Row]) -> str:
    """One line per shuffled loader: its shuffle's quality beside its speed."""
    lines = []
    for r in rows:
        if r.shuffle and r.quality:
            q = r.quality
            bad = f"; {int(q['unmatched'])} samples matched no source sample" if q.get("unmatched") else ""
            lines.append(f"  {_label(r)}: mean move {q['mean_move']:.3f} of the epoch, "
                         f"{q['shards_per_batch']:.1f} source shards per batch{bad}")
    return "\n".join(lines)


def render_targets(targets: Sequence[Target], *, markdown: bool = False) -> str:
    head = "| target | measured | goal | result | reference, same ratio |"
    lines = [head, "|---|---:|---:|---|---:|"] if markdown else []
    for t in targets:
        goal = ("<= " if not t.higher_is_better else ">= ") + f"{t.threshold:g}x"
        # Three decimals: a ratio of 0.998 must not read as "1.00x MISS".
        value = _fmt(t.value, ".3f") + ("x" if t.value is not None else "")
        reference = "" if t.ceiling is None else f"{t.ceiling_kind} {t.ceiling:.2f}x"
        if t.ceiling is not None and t.ceiling_kind == "ceiling" and t.ceiling < t.threshold:
            reference += " (the GET loop misses the goal too)"
        if markdown:
            lines.append(f"| {t.name} | {value} | {goal} | {t.status} | {reference or '-'} |")
        else:
            more = f"; {reference}" if reference else ""
            lines.append(f"{t.status:<5} {t.name:<58} {value:>7}  (goal {goal}; {t.detail}{more})")
    return "\n".join(lines)


def rows_as_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def write_chart(rows: Sequence[Row], path: Path, *, title: str) -> None:
    """A horizontal bar chart of samples/s per read system (median), coloured by kind: the shuffled loaders
    and the references first (the headline), then the unshuffled loaders, paler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shuffled, unshuffled, _ = split_rows(rows)
    shown = [r for r in [*shuffled, *unshuffled] if r.family not in ("memcpy", "tcp") and r.samples_per_s]
    colours = {"shardcache": "#1f77b4", "limit": "#7f7f7f", "alternative": "#ff7f0e"}
    labels = []
    for r in shown:
        parts = [f"w={r.workers}" if r.workers is not None else "", f"b={r.batch_size}" if r.batch_size else ""]
        mode = "" if r.shuffle is None else ("shuffled, " if r.shuffle else "unshuffled, ")
        labels.append(f"{r.system} ({mode}{', '.join(p for p in parts if p)})")
    values = [r.samples_per_s or 0.0 for r in shown]
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(shown) + 1.6))
    y = list(range(len(shown)))[::-1]
    from matplotlib.colors import to_rgba

    ax.barh(y, values, color=[to_rgba(colours.get(r.group, "#2ca02c"), 0.4 if r.shuffle is False else 1.0)
                              for r in shown])
    ax.set_yticks(y, labels, fontsize=8)
    for yi, v in zip(y, values, strict=True):
        ax.text(v, yi, f" {v:,.0f}", va="center", fontsize=7)
    ax.set_xlabel("samples/s (median; DataLoaders: warm epoch; higher is better; pale: unshuffled)")
    ax.set_title(title, fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, ["shardcache", "limit or reference", "alternative"], loc="lower right", fontsize=8)
    ax.set_xlim(0, max(values, default=1.0) * 1.18)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
