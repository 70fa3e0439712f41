"""S3 sources through moto's server mode: real HTTP on 127.0.0.1, read with pyarrow's S3FileSystem."""

from __future__ import annotations

import dataclasses
import io
import socket
from collections.abc import Iterator

import boto3
import pyarrow.parquet as pq
import pytest
from moto.core.authorization import enable_iam_authentication
from moto.server import ThreadedMotoServer

from shardcache.cache import ShardCache
from shardcache.errors import SourceError
from shardcache.prefetcher import prefetch, read_source_shard

from .conftest import assert_rebuilds, cached_ids, image_table

BUCKET = "datasets"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    client = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}", region_name="us-east-1")
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return client


def _put_parquet(client, key: str, start: int, rows: int, *, row_group_size: int = 100) -> None:
    buf = io.BytesIO()
    pq.write_table(image_table(start, rows), buf, row_group_size=row_group_size)
    client.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())


def test_parquet_on_s3(s3, s3_endpoint: str, cache: ShardCache, dataset_name: str) -> None:
    for k in range(2):
        _put_parquet(s3, f"train/part-{k}.parquet", k * 300, 300)
    s3.put_object(Bucket=BUCKET, Key="train/_SUCCESS", Body=b"")
    m = prefetch(f"s3://{BUCKET}/train/", dataset=dataset_name, cache=cache, shard_size="32KiB",
                 endpoint_override=s3_endpoint, scheme="http")
    assert cached_ids(cache, m) == list(range(600))
    assert m.source is not None
    assert dict(m.source.filesystem) == {"endpoint_override": s3_endpoint, "scheme": "http"}
    assert m.shards[0].source[0].uri == f"s3://{BUCKET}/train/part-0.parquet"
    assert_rebuilds(cache, m)  # read-through from S3, credentials from the environment

    # Unchanged objects: a no-op. A rewritten object (new ETag/mtime/size): a new version.
    assert prefetch(f"s3://{BUCKET}/train/", dataset=dataset_name, cache=cache, shard_size="32KiB",
                    endpoint_override=s3_endpoint, scheme="http").version == m.version
    _put_parquet(s3, "train/part-1.parquet", 5000, 10)
    m2 = prefetch(f"s3://{BUCKET}/train/", dataset=dataset_name, cache=cache, shard_size="32KiB",
                  endpoint_override=s3_endpoint, scheme="http")
    assert m2.version != m.version
    assert m2.num_rows == 310


def test_raw_files_on_s3(s3, s3_endpoint: str, cache: ShardCache, dataset_name: str) -> None:
    for label in ("a", "b"):
        for i in range(3):
            s3.put_object(Bucket=BUCKET, Key=f"imgs/{label}/{i}.jpg", Body=bytes([i]) * 100)
    m = prefetch(f"s3://{BUCKET}/imgs", dataset=dataset_name, cache=cache, label=True,
                 endpoint_override=s3_endpoint, scheme="http")
    table = cache.get_table(m, 0)
    assert table.column("path").to_pylist() == ["a/0.jpg", "a/1.jpg", "a/2.jpg", "b/0.jpg", "b/1.jpg", "b/2.jpg"]
    assert table.column("label").to_pylist() == ["a"] * 3 + ["b"] * 3
    assert read_source_shard(m, 0).equals(table)


def test_missing_prefix_on_s3(s3, s3_endpoint: str, cache: ShardCache, dataset_name: str) -> None:
    with pytest.raises(SourceError, match=f"s3://{BUCKET}/nothing-here"):
        prefetch(f"s3://{BUCKET}/nothing-here/", dataset=dataset_name, cache=cache,
                 endpoint_override=s3_endpoint, scheme="http")
    assert dataset_name not in cache.datasets()


def test_unreachable_endpoint(cache: ShardCache, dataset_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(SourceError, match="cannot list source s3://bucket/x") as info:
        prefetch("s3://bucket/x/", dataset=dataset_name, cache=cache, endpoint_override=f"127.0.0.1:{_free_port()}",
                 scheme="http", connect_timeout=1, retry_attempts=1)
    assert info.value.uri == "s3://bucket/x/"
    assert dataset_name not in cache.datasets()


def test_permission_denied(s3, s3_endpoint: str, cache: ShardCache, dataset_name: str) -> None:
    _put_parquet(s3, "secret/part-0.parquet", 0, 10)
    iam = boto3.client("iam", endpoint_url=f"http://{s3_endpoint}", region_name="us-east-1")
    user = f"nobody-{dataset_name}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    with enable_iam_authentication(), pytest.raises(SourceError) as info:
        prefetch(f"s3://{BUCKET}/secret/", dataset=dataset_name, cache=cache, endpoint_override=s3_endpoint,
                 scheme="http", access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"])
    message = str(info.value)
    assert f"s3://{BUCKET}/secret/" in message
    assert "ACCESS_DENIED" in message.upper().replace(" ", "_")
    assert key["SecretAccessKey"] not in message
    assert dataset_name not in cache.datasets()


def test_cli_with_an_http_endpoint(s3, s3_endpoint: str, redis_url: str, dataset_name: str) -> None:
    import json

    from click.testing import CliRunner

    from shardcache.cli import cli

    _put_parquet(s3, "cli/part-0.parquet", 0, 50)
    result = CliRunner().invoke(cli, ["prefetch", f"s3://{BUCKET}/cli/", "--dataset", dataset_name, "--redis",
                                      redis_url, "--endpoint-override", f"http://{s3_endpoint}", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == 50


def test_an_object_rewritten_after_the_prefetch_is_never_read_through(
    s3, s3_endpoint: str, cache: ShardCache, dataset_name: str
) -> None:
    """Issue 16, items 1 and 2 on S3: the manifest records each object's size and mtime; a rebuilt
    shard of a rewritten object fails its checksum, or (no checksum yet) the object's identity."""
    for k in range(2):
        _put_parquet(s3, f"rw/part-{k}.parquet", k * 300, 300)
    m = prefetch(f"s3://{BUCKET}/rw/", dataset=dataset_name, cache=cache, shard_size="32KiB",
                 endpoint_override=s3_endpoint, scheme="http")
    assert [f.uri for f in m.files] == [f"s3://{BUCKET}/rw/part-0.parquet", f"s3://{BUCKET}/rw/part-1.parquet"]
    assert all(f.size > 0 and f.mtime_ns > 0 for f in m.files)
    _put_parquet(s3, "rw/part-0.parquet", 90_000, 300)  # same key and row count, other ids
    with pytest.raises(SourceError, match=r"part-0\.parquet") as info:
        read_source_shard(m, 0)
    assert (info.value.dataset, info.value.shard) == (dataset_name, 0)
    # A loading version has no checksums yet: the object's size and mtime (S3's LastModified, to the
    # second) are compared. The rewrite below changes the size, so it is seen even within one second.
    loading = m.replace(state="loading", shards=tuple(
        dataclasses.replace(s, checksum="", nbytes=0, chunks=0, cached=False) for s in m.shards))
    _put_parquet(s3, "rw/part-1.parquet", 95_000, 300, row_group_size=50)
    with pytest.raises(SourceError, match=r"part-1\.parquet was rewritten") as info:
        read_source_shard(loading, loading.num_shards - 1)
    assert info.value.uri == f"s3://{BUCKET}/rw/part-1.parquet"
