"""A parallel prefetch on one machine: plan, one process per part, then the commit.

The same code path as on Kubernetes (``plan_op``, ``prefetch_op`` in a ``dsl.ParallelFor``,
``commit_op``): :func:`~shardcache.prefetcher.plan_prefetch`, then ``run_prefetch(part=i, parts=N)``
in N processes (``forkserver``, else ``spawn``) (reading, transforming, encoding and writing in each), their progress
summed into one callback, then :func:`~shardcache.prefetcher.commit_prefetch` once every part
loaded all its shards. A part that fails or dies leaves the version ``loading``; running again
resumes (each part loads only what its range lacks).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import threading
import time
from collections.abc import Sequence
from multiprocessing import connection
from typing import Any

from ..cache.store import ShardCache
from ..errors import ConfigError, PrefetchFailed, ShardCacheError
from .parts import commit_prefetch, plan_prefetch
from .report import PrefetchReport, Progress, ProgressCallback
from .run import run_prefetch

__all__ = ["parallel_prefetch"]

log = logging.getLogger(__name__)

# The arguments of run_prefetch that shape the version, which the plan and the commit take too.
_SHAPING = ("format", "shard_size", "compression", "transform", "columns", "label", "wait", "filesystem")


def parallel_prefetch(
    source: str | os.PathLike[str],
    *,
    dataset: str,
    processes: int,
    cache: ShardCache | str | None = None,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> PrefetchReport:
    """Prefetch ``source`` in ``processes`` worker processes, one part each; return the combined report.

    ``options`` are those of :func:`~shardcache.prefetcher.run_prefetch` (a ``transform`` must be
    picklable: a module-level function). The report lists every part's failed shards; with
    failures the version stays ``loading`` and nothing is committed. Raises what the plan and the
    commit raise, a part's own error (after the other parts finished), or :class:`PrefetchFailed`
    when a part's process died.
    """
    started = time.monotonic()
    if "part" in options or "parts" in options or "version" in options:
        raise ConfigError("parallel_prefetch picks the parts itself: pass processes=N, not part=, parts= or version=")
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress={progress!r} is not callable; pass a function taking a Progress")
    if options.get("transform") is not None:
        try:
            pickle.dumps(options["transform"])
        except Exception as exc:
            raise ConfigError(f"transform={options['transform']!r} cannot be sent to worker processes ({exc}); "
                              "make it a module-level function or a picklable callable object") from None
    shaping = {k: v for k, v in options.items() if k in _SHAPING or k not in _RUN_ONLY}
    plan = plan_prefetch(source, dataset=dataset, parts=processes, cache=cache, **shaping)
    if plan.state == "complete" and not plan.missing:  # cached and intact: no process to start
        return PrefetchReport(dataset=dataset, version=plan.version, shards=plan.shards, rows=plan.rows,
                              skipped=plan.shards, state="complete", noop=True, seconds=time.monotonic() - started)
    reports, errors, died = _run_parts(source, dataset=dataset, cache=cache, version=plan.version,
                                       parts=plan.parts, progress=progress, options=options)
    report = PrefetchReport(dataset=dataset, version=plan.version, shards=plan.shards, rows=plan.rows)
    for r in reports:
        report.written += r.written
        report.bytes += r.bytes
        report.skipped += r.skipped
        report.failed += r.failed
    report.failed.sort(key=lambda f: f.shard)
    if errors:
        raise errors[0]
    if died:
        report.seconds = time.monotonic() - started
        raise PrefetchFailed(
            f"part{'s' if len(died) > 1 else ''} {', '.join(died)} of the prefetch of {dataset!r} died before "
            "reporting; the version stays 'loading': run again to resume (only the missing shards are loaded)",
            report=report,
        )
    if not report.failed:
        done = commit_prefetch(source, dataset=dataset, cache=cache, version=plan.version, **shaping)
        report.manifest, report.state = done.manifest, done.state
        report.noop = done.noop and report.written == 0
    report.seconds = time.monotonic() - started
    log.info("%s", report.summary())
    return report


_RUN_ONLY = ("workers", "allow_partial", "order", "seed", "world_size", "max_inflight")


def _run_parts(
    source: str | os.PathLike[str], *, dataset: str, cache: ShardCache | str | None, version: str, parts: int,
    progress: ProgressCallback | None, options: dict[str, Any],
) -> tuple[list[PrefetchReport], list[BaseException], list[str]]:
    """Run every part in its own process: ``(reports, errors raised, parts that died without a word)``.

    Each part has a pipe of its own, which it writes synchronously and only it holds the write end of:
    all it sent is in the pipe before it exits, and its exit ends the pipe. A part that ends it (exits, or
    is killed, even midway through a message) without a last report died; one killed part never blocks
    the others (a shared ``multiprocessing.Queue`` has one write lock, which a part killed while its
    feeder thread holds it never releases, and then every other part hangs on it).
    """
    ctx = _context()
    pipes = [ctx.Pipe(duplex=False) for _ in range(parts)]
    procs = {
        part: ctx.Process(target=_part_main, name=f"shardcache-prefetch-part-{part}", daemon=True,
                          args=(pipes[part][1], part, parts, os.fspath(source), dataset, cache, version, options))
        for part in range(parts)
    }
    latest: dict[int, Progress] = {}
    reports: list[PrefetchReport] = []
    errors: list[BaseException] = []
    died: list[str] = []
    try:
        for part, proc in procs.items():
            proc.start()
            pipes[part][1].close()  # the part holds the only write end now
        pending: dict[Any, int] = {pipes[part][0]: part for part in procs}
        while pending:
            ready: list[Any] = connection.wait(list(pending))
            for conn in ready:
                part = pending[conn]
                try:
                    message: tuple[str, int, Any] = conn.recv()
                except (EOFError, OSError):  # the pipe ended without a last report: the part died
                    del pending[conn]
                    procs[part].join(timeout=5)
                    died.append(f"{part} (exit code {procs[part].exitcode})")
                    continue
                except Exception as exc:  # a message that cannot be rebuilt here: that part's error
                    del pending[conn]
                    errors.append(ShardCacheError(f"part {part} sent a report that cannot be read: {exc!r}"))
                    continue
                kind, _, payload = message
                if kind == "progress":
                    latest[part] = payload
                    if progress is not None:
                        progress(_combined(latest.values()))
                    continue
                del pending[conn]
                (reports if kind == "done" else errors).append(payload)
    finally:
        try:
            for proc in procs.values():
                if proc.pid is None:  # never started (a start failed): nothing to stop
                    continue
                proc.join(timeout=5)
                if proc.is_alive():  # interrupted: stop the others, their parts resume on the next run
                    proc.terminate()
                    proc.join()
        finally:
            for reader, writer in pipes:
                reader.close()
                writer.close()
    return reports, errors, died


def _context() -> Any:
    """``forkserver`` where there is one: a clean single-threaded server that imported the prefetcher
    once forks each part, so N parts (and later runs from this process) do not import it N times;
    else ``spawn``. Never a plain fork of this process, whose threads may hold locks."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return mp.get_context("spawn")


def _combined(parts: Sequence[Progress] | Any) -> Progress:
    items = list(parts)
    return Progress(
        shards_done=sum(p.shards_done for p in items),
        shards_total=sum(p.shards_total for p in items),
        bytes_done=sum(p.bytes_done for p in items),
        bytes_total=sum(p.bytes_total for p in items),
        skipped=sum(p.skipped for p in items),
    )


def _part_main(pipe: Any, part: int, parts: int, source: str, dataset: str, cache: ShardCache | str | None,
               version: str, options: dict[str, Any]) -> None:
    """One part, in its own process: its progress and its report (or error) go back through ``pipe``
    (sent at once, not by a feeder thread: all of it is in the pipe before the process exits)."""
    sending = threading.Lock()  # one message at a time, whichever thread reports

    def send(message: tuple[str, int, Any]) -> None:
        with sending:
            pipe.send(message)

    def progress(p: Progress) -> None:
        send(("progress", part, p))

    # Metrics from the environment (shardcache.metrics): each part serves on SHARDCACHE_METRICS_PORT + part
    # and pushes a group of its own, as the local ranks of a torchrun pod do; else the parts would share one.
    os.environ["LOCAL_RANK"] = str(part)
    try:
        report = run_prefetch(source, dataset=dataset, cache=cache, part=part, parts=parts, version=version,
                              progress=progress, **options)
        report.manifest = None  # the parent reads the committed one
        send(("done", part, report))
    except BaseException as exc:  # handed to the parent, which raises it once the other parts are done
        try:
            pickle.loads(pickle.dumps(exc))  # the parent must be able to rebuild it, not only this side to send it
        except Exception:
            exc = ShardCacheError(f"part {part}: {type(exc).__name__}: {exc}")
        send(("error", part, exc))
