"""A prefetch in a child process that tells its parent how far it got, so a test can SIGKILL it
at a chosen point or start two at the same instant.

    python prefetch_job.py URL SOURCE DATASET [--go] [--pause S] [--shard-size 4KiB]

Prints ``ready`` once imported (then, with ``--go``, waits for a line on stdin), one
``progress N`` line per shard done, and finally ``done <report JSON>`` (exit 0) or
``error <class> <message>`` (exit 3). ``--pause`` sleeps after each shard, so that a
racing process surely meets this one mid-load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from shardcache.cache import RetryPolicy, connect
from shardcache.errors import ShardCacheError
from shardcache.prefetcher import run_prefetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("source")
    parser.add_argument("dataset")
    parser.add_argument("--go", action="store_true", help="wait for a line on stdin before starting")
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--shard-size", default="8KiB")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the writer lock")
    parser.add_argument("--deadline", type=float, default=10.0)
    args = parser.parse_args(argv)

    def progress(p: object) -> None:
        print(f"progress {getattr(p, 'shards_done', 0)}", flush=True)
        if args.pause:
            time.sleep(args.pause)

    print("ready", flush=True)
    if args.go:
        sys.stdin.readline()
    try:
        with connect(args.url, retry=RetryPolicy(deadline=args.deadline)) as cache:
            report = run_prefetch(
                args.source, dataset=args.dataset, cache=cache, shard_size=args.shard_size,
                progress=progress, wait=args.wait,
            )
    except ShardCacheError as exc:
        print(f"error {type(exc).__name__} {' '.join(str(exc).split())}", flush=True)
        return 3
    print("done " + json.dumps(report.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
