"""Prefetch the training data into shardcache while another step runs, then train from the cache.

::

    validate_op (evaluation data) ──┐
                                    ├──> train_op (reads through CachedDataLoader)
    prefetch_op (training data)  ───┘

``prefetch_op`` and ``validate_op`` run in parallel: by the time the upstream work is
done, the training data sits in Redis and the training step pays no storage I/O.
The cache is found through the Kubernetes Service ``shardcache-redis``
(deploy/k8s); its password comes from the Secret ``shardcache-redis-auth`` as the
environment variable ``SHARDCACHE_REDIS_PASSWORD``, never as a pipeline input.

``mix_pipeline`` prefetches two datasets side by side and trains on a weighted mix of them
(``Stream``s in the CachedDataLoader: each epoch holds ``epoch_size`` samples, ``mix_weight`` of them
from the second dataset; exactly once, resumable)::

    prefetch_op (training data)  ──┐
                                   ├──> train_op (a 70/30 mix of the two, read through CachedDataLoader)
    prefetch_op (second dataset) ──┘

Compile them (pipeline.yaml and mix_pipeline.yaml next to this file are the result)::

    python examples/kubeflow/pipeline.py
    python examples/kubeflow/pipeline.py --mix
    python examples/kubeflow/pipeline.py --image registry.example.com/ml/shardcache:0.1.0 -o offline.yaml

``--image`` builds every step from an image made with the repository's Dockerfile,
for clusters that cannot reach PyPI.
"""

# No `from __future__ import annotations`: KFP reads the components' annotations as live objects.
import argparse
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Metrics, Output

from shardcache.kubeflow_components import BASE_IMAGE, PACKAGES_TO_INSTALL, components_for_image
from shardcache.kubeflow_components import prefetch_op as default_prefetch_op

HERE = Path(__file__).resolve().parent
PASSWORD_SECRET = "shardcache-redis-auth"
PASSWORD_ENV = "SHARDCACHE_REDIS_PASSWORD"


def validate_op(source: str, min_rows: int = 1, *, metrics: Output[Metrics]) -> int:
    """The upstream step: check the evaluation data (readable, labelled, enough rows); returns its row count.

    Args:
        source: A Parquet file or folder with a 'features' list column and a 'label' column.
        min_rows: Fail with fewer rows than this.
        metrics: Rows and files checked.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    data = ds.dataset(source, format="parquet")
    missing = {"features", "label"} - set(data.schema.names)
    if missing:
        raise ValueError(f"{source}: columns {sorted(missing)} are missing (it has {data.schema.names})")
    labels = data.to_table(columns=["label"])["label"]
    if labels.null_count:
        raise ValueError(f"{source}: {labels.null_count} rows have no label")
    if len(labels) < min_rows:
        raise ValueError(f"{source}: {len(labels)} rows, fewer than min_rows={min_rows}")
    metrics.log_metric("rows", len(labels))
    metrics.log_metric("files", len(data.files))
    metrics.log_metric("label_mean", pc.mean(labels).as_py())
    return len(labels)


def train_op(
    dataset: str,
    version: str,
    redis_url: str = "",
    k8s_service: str = "",
    epochs: int = 2,
    batch_size: int = 64,
    num_workers: int = 2,
    mix_dataset: str = "",
    mix_version: str = "",
    mix_weight: float = 0.3,
    epoch_size: int = 0,
    *,
    metrics: Output[Metrics],
) -> int:
    """Fit a linear model on the cached dataset (or a mix of two), reading it through CachedDataLoader; returns
    the samples seen per epoch.

    Shards the cache does not hold (evicted, or never cached) are read from the source.

    Args:
        dataset: The dataset's name in the cache.
        version: The version to train on (prefetch_op's output). Empty: the newest, even one still loading.
        redis_url: The cache URL, without a password. Empty: use k8s_service.
        k8s_service: The Service fronting the cache.
        epochs: Passes over the data.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        mix_dataset: A second cached dataset to mix in. Empty: train on ``dataset`` alone.
        mix_version: The second dataset's version (its prefetch_op's output). Empty: the newest.
        mix_weight: The second dataset's share of each epoch.
        epoch_size: Samples an epoch. 0: every row of the data once (of both datasets, for a mix).
        metrics: Loss, samples (per dataset for a mix), cache hit ratio and time spent waiting for data.
    """
    import torch

    from shardcache.dataloader import CachedDataLoader, Stream
    from shardcache.kubeflow_components import open_cache

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data: Any = dataset
    options: dict[str, Any] = {"version": version or None}
    if mix_dataset:
        data = [Stream(dataset, version=version or None, weight=1 - mix_weight),
                Stream(mix_dataset, version=mix_version or None, weight=mix_weight)]  # fmt: skip
        options = {}
    with open_cache(redis_url=redis_url, k8s_service=k8s_service) as cache:
        loader = CachedDataLoader(data, cache=cache, columns=["features", "label"], batch_size=batch_size,
                                  num_workers=num_workers, device=device, epoch_size=epoch_size or None,
                                  **options)  # fmt: skip
        model: Any = None
        optimizer: Any = None
        loss = torch.zeros(())
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for batch in loader:
                x, y = batch["features"].float(), batch["label"].float()
                if model is None:
                    model = torch.nn.Linear(x.shape[1], 1).to(device)
                    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        stats = loader.stats()
    metrics.log_metric("loss", float(loss))
    metrics.log_metric("samples", stats.samples)
    metrics.log_metric("cache_hit_ratio", round(stats.hit_ratio, 4))
    metrics.log_metric("read_throughs", stats.read_throughs)
    metrics.log_metric("wait_fraction", round(stats.wait_fraction, 4))
    for label, stream in stats.streams.items():
        metrics.log_metric(f"samples_{label}", stream.samples)
    return stats.samples // epochs


def _steps(image: str | None) -> tuple[dict[str, Any], Any]:
    """``dsl.component`` options of this file's steps and the prefetch component: on ``python:3.11-slim`` +
    PyPI, or all on ``image`` (the Dockerfile's)."""
    if image is None:
        return {"base_image": BASE_IMAGE, "packages_to_install": list(PACKAGES_TO_INSTALL)}, default_prefetch_op
    return {"base_image": image, "install_kfp_package": False}, components_for_image(image).prefetch_op


def build_pipeline(image: str | None = None) -> Any:
    """The pipeline, its steps on ``python:3.11-slim`` + PyPI, or all on ``image`` (the Dockerfile's)."""
    options, prefetch_op = _steps(image)
    validate = dsl.component(**options)(validate_op)
    train = dsl.component(**options)(train_op)

    @dsl.pipeline(
        name="shardcache-train",
        description="Prefetch the training data into shardcache alongside validation, then train from the cache.",
    )
    def pipeline(
        source: str,
        eval_source: str,
        dataset: str = "train",
        k8s_service: str = "shardcache-redis",
        redis_url: str = "",
        shard_size: str = "4MiB",
        epochs: int = 2,
        batch_size: int = 64,
        num_workers: int = 2,
    ) -> int:
        checked = validate(source=eval_source)
        checked.set_display_name("validate evaluation data")

        prefetch = prefetch_op(source=source, dataset=dataset, redis_url=redis_url, k8s_service=k8s_service,
                               shard_size=shard_size)
        prefetch.set_display_name("prefetch training data")
        prefetch.set_caching_options(False)  # cheap when cached, and it re-caches evicted shards
        # Near the cache, on general-purpose nodes.
        kubernetes.add_node_selector(prefetch, label_key="node.kubernetes.io/pool", label_value="cpu")

        trained = train(dataset=dataset, version=prefetch.outputs["Output"], redis_url=redis_url,
                        k8s_service=k8s_service, epochs=epochs, batch_size=batch_size, num_workers=num_workers)
        trained.after(checked)  # the training step waits for both
        trained.set_display_name("train from the cache")
        trained.set_cpu_request("2").set_memory_request("8Gi").set_memory_limit("8Gi")
        # On GPU nodes, which are tainted so that only GPU work lands there.
        kubernetes.add_node_selector(trained, label_key="nvidia.com/gpu.present", label_value="true")
        kubernetes.add_toleration(trained, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")

        for task in (prefetch, trained):
            kubernetes.use_secret_as_env(task, secret_name=PASSWORD_SECRET,
                                         secret_key_to_env={"password": PASSWORD_ENV})
        return trained.outputs["Output"]

    return pipeline


def build_mix_pipeline(image: str | None = None) -> Any:
    """Two datasets prefetched side by side, then one training step on a weighted mix of both."""
    options, prefetch_op = _steps(image)
    train = dsl.component(**options)(train_op)

    @dsl.pipeline(
        name="shardcache-train-mix",
        description="Prefetch two datasets into shardcache side by side, then train on a weighted mix of both.",
    )
    def mix_pipeline(
        source: str,
        mix_source: str,
        dataset: str = "train",
        mix_dataset: str = "train-extra",
        mix_weight: float = 0.3,
        epoch_size: int = 0,
        k8s_service: str = "shardcache-redis",
        redis_url: str = "",
        shard_size: str = "4MiB",
        epochs: int = 2,
        batch_size: int = 64,
        num_workers: int = 2,
    ) -> int:
        tasks = []
        for src, name, title in ((source, dataset, "training data"), (mix_source, mix_dataset, "second dataset")):
            prefetch = prefetch_op(source=src, dataset=name, redis_url=redis_url, k8s_service=k8s_service,
                                   shard_size=shard_size)  # fmt: skip
            prefetch.set_display_name(f"prefetch {title}")
            prefetch.set_caching_options(False)
            kubernetes.add_node_selector(prefetch, label_key="node.kubernetes.io/pool", label_value="cpu")
            tasks.append(prefetch)
        first, second = tasks

        trained = train(dataset=dataset, version=first.outputs["Output"], mix_dataset=mix_dataset,
                        mix_version=second.outputs["Output"], mix_weight=mix_weight, epoch_size=epoch_size,
                        redis_url=redis_url, k8s_service=k8s_service, epochs=epochs, batch_size=batch_size,
                        num_workers=num_workers)  # fmt: skip
        trained.set_display_name("train on the mix")
        trained.set_cpu_request("2").set_memory_request("8Gi").set_memory_limit("8Gi")
        kubernetes.add_node_selector(trained, label_key="nvidia.com/gpu.present", label_value="true")
        kubernetes.add_toleration(trained, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        for task in (first, second, trained):
            kubernetes.use_secret_as_env(task, secret_name=PASSWORD_SECRET,
                                         secret_key_to_env={"password": PASSWORD_ENV})  # fmt: skip
        return trained.outputs["Output"]

    return mix_pipeline


pipeline = build_pipeline()
mix_pipeline = build_mix_pipeline()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="an image built from shardcache's Dockerfile, for clusters without PyPI")
    parser.add_argument("--mix", action="store_true", help="compile mix_pipeline (two datasets, one weighted mix)")
    parser.add_argument("-o", "--output", type=Path, help="default: pipeline.yaml or mix_pipeline.yaml here")
    args = parser.parse_args()
    build = build_mix_pipeline if args.mix else build_pipeline
    output = args.output or HERE / ("mix_pipeline.yaml" if args.mix else "pipeline.yaml")
    compiler.Compiler().compile(build(args.image), str(output))


if __name__ == "__main__":
    main()
