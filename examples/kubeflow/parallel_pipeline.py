"""Prefetch one dataset with several pods at once: plan, load the parts in a ParallelFor, commit once.

::

    plan_op ──> ParallelFor(item in plan): prefetch_op(item.part, item.parts, item.version) ──> commit_op

``plan_op`` lists the source, plans the version's shards, checks that the whole version fits
in the cache and records it as ``loading``; it returns one item per part. Each ``prefetch_op``
pod reads, transforms, encodes and writes only its part's shards (a contiguous range), so
the source bandwidth, the decoding and the network of N pods add up. ``commit_op`` collects
the parts' outputs (``dsl.Collected``), so it runs after the last one, and commits the
version exactly once; while any part failed it fails too, naming the parts to re-run, and the
version stays ``loading``. Re-running the pipeline resumes: each part loads only what it lacks.

The cache is found through the Service ``shardcache-redis`` (deploy/k8s); the password
comes from the Secret ``shardcache-redis-auth`` as ``SHARDCACHE_REDIS_PASSWORD``.

Compile it (parallel_pipeline.yaml next to this file is the result)::

    python examples/kubeflow/parallel_pipeline.py
    python examples/kubeflow/parallel_pipeline.py --image registry.example.com/ml/shardcache:0.1.0 -o offline.yaml
"""

# No `from __future__ import annotations`: KFP reads the components' annotations as live objects.
import argparse
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes

from shardcache.kubeflow_components import commit_op, components_for_image, plan_op, prefetch_op

HERE = Path(__file__).resolve().parent
PASSWORD_SECRET = "shardcache-redis-auth"
PASSWORD_ENV = "SHARDCACHE_REDIS_PASSWORD"


def build_pipeline(image: str | None = None) -> Any:
    """The pipeline, on the lightweight components (PyPI), or all on ``image`` (the Dockerfile's)."""
    if image is None:
        plan, load, commit = plan_op, prefetch_op, commit_op
    else:
        ops = components_for_image(image)
        plan, load, commit = ops.plan_op, ops.prefetch_op, ops.commit_op

    @dsl.pipeline(
        name="shardcache-parallel-prefetch",
        description="Prefetch a dataset into shardcache with several pods: plan, load the parts, commit once.",
    )
    def pipeline(
        source: str,
        dataset: str = "train",
        parts: int = 4,
        k8s_service: str = "shardcache-redis",
        redis_url: str = "",
        shard_size: str = "4MiB",
        compression: str = "",
    ) -> str:
        planned = plan(source=source, dataset=dataset, parts=parts, redis_url=redis_url, k8s_service=k8s_service,
                       shard_size=shard_size, compression=compression)
        planned.set_display_name("plan the version")
        planned.set_caching_options(False)  # the plan depends on what the cache holds now

        with dsl.ParallelFor(planned.outputs["Output"]) as item:
            loaded = load(source=source, dataset=dataset, redis_url=redis_url, k8s_service=k8s_service,
                          shard_size=shard_size, compression=compression, part=item.part, parts=item.parts,
                          version=item.version)
            loaded.set_display_name("load one part")
            loaded.set_caching_options(False)  # cheap when cached, and it re-caches evicted shards
            # A part whose pod is lost is run again alone: it loads only the shards its range lacks.
            loaded.set_retry(num_retries=2, backoff_duration="30s")
            loaded.set_cpu_request("2").set_memory_request("2Gi").set_memory_limit("4Gi")
            # Near the cache, on general-purpose nodes.
            kubernetes.add_node_selector(loaded, label_key="node.kubernetes.io/pool", label_value="cpu")

        committed = commit(source=source, dataset=dataset, parts_done=dsl.Collected(loaded.outputs["Output"]),
                           redis_url=redis_url,
                           k8s_service=k8s_service, shard_size=shard_size, compression=compression)
        committed.set_display_name("commit the version")
        committed.set_caching_options(False)

        for task in (planned, loaded, committed):
            kubernetes.use_secret_as_env(task, secret_name=PASSWORD_SECRET,
                                         secret_key_to_env={"password": PASSWORD_ENV})
        return committed.outputs["Output"]

    return pipeline


pipeline = build_pipeline()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="an image built from shardcache's Dockerfile, for clusters without PyPI")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "parallel_pipeline.yaml")
    args = parser.parse_args()
    compiler.Compiler().compile(build_pipeline(args.image), str(args.output))


if __name__ == "__main__":
    main()
