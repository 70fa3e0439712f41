"""Bytes read from Redis are untrusted: anyone who can write there can plant them.

Any malformed manifest, shard record or payload raises ManifestCorrupted or
ShardCorrupted (or ConfigError for an impossible name), never another exception,
never a hang, and never an allocation sized by the attacker.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from shardcache.cache import KeySpace, Manifest, ShardInfo, SourceSegment, SourceSpec, decode_payload, encode_table
from shardcache.cache.codec import _without_utf8
from shardcache.cache.manifest import MAX_CHUNKS_PER_SHARD, FileIdentity, apply_shard_record
from shardcache.errors import ConfigError, ManifestCorrupted, ShardCorrupted

# SHARDCACHE_FUZZ_EXAMPLES=5000 for a long hunt; CI keeps it short.
EXAMPLES = int(os.environ.get("SHARDCACHE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(FUZZ, max_examples=max(EXAMPLES * 2 // 5, 10))  # pure string functions: fewer examples find the same

TABLE = pa.table(
    {
        "x": pa.array(range(60), pa.int64()),
        "s": [f"row-{i}" for i in range(60)],
        "tokens": pa.array([list(range(i % 7)) for i in range(60)], pa.list_(pa.int32())),
        "img": pa.array([bytes([i]) * 16 for i in range(60)], pa.binary(16)),
    }
)
PAYLOADS = {c: bytes(encode_table(TABLE, compression=c)) for c in (None, "lz4", "zstd")}


def valid_manifest(*, cached: bool = True) -> Manifest:
    keys = KeySpace()
    shards = tuple(
        ShardInfo(
            index=i, key=keys.shard("ds", "v1", i), rows=30,
            source=(SourceSegment(uri="s3://b/f.parquet", row_start=30 * i, row_stop=30 * (i + 1)),),
        )
        for i in range(2)
    )
    if cached:
        shards = tuple(s.written(nbytes=1000, checksum="0123456789abcdef", chunks=1) for s in shards)
    return Manifest(
        name="ds", version="v1", schema=TABLE.schema, shards=shards, state="complete", compression="lz4",
        transform_id="t@1", source=SourceSpec(uri="s3://b/", format="parquet", columns=("x", "s")),
        files=(FileIdentity(uri="s3://b/f.parquet", size=123_456, mtime_ns=1_700_000_000_000_000_000),),
    )


VALID_DOC: dict[str, Any] = json.loads(valid_manifest().to_json())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def parse_or_refuse(data: bytes | str) -> Manifest | None:
    try:
        return Manifest.from_json(data)
    except (ManifestCorrupted, ConfigError):
        return None


def test_valid_manifest_round_trips() -> None:
    m = valid_manifest()
    assert Manifest.from_json(m.to_json(), expected_name="ds", expected_version="v1") == m
    loading = valid_manifest(cached=False)
    assert Manifest.from_json(loading.to_json()) == loading


def test_a_manifest_written_before_file_identities_reads_without_them() -> None:
    older = {k: v for k, v in VALID_DOC.items() if k != "files"}
    assert Manifest.from_json(json.dumps(older)).files == ()
    assert b'"files"' not in valid_manifest().replace(files=()).to_json(), "no field when nothing is known"


@FUZZ
@given(st.binary(max_size=400))
def test_manifest_arbitrary_bytes(data: bytes) -> None:
    parse_or_refuse(data)


@FUZZ
@given(json_values)
def test_manifest_arbitrary_json(value: Any) -> None:
    assert parse_or_refuse(json.dumps(value)) is None


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


VALID_PATHS = paths(VALID_DOC)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(VALID_PATHS), json_values), min_size=1, max_size=3))
def test_manifest_with_fields_replaced(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    doc = json.loads(json.dumps(VALID_DOC))
    for path, value in edits:
        target = doc
        try:
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit changed the shape
    m = parse_or_refuse(json.dumps(doc))
    if m is not None:  # accepted: then it is internally consistent
        assert m.num_rows == sum(s.rows for s in m.shards)
        assert all(s.index == i for i, s in enumerate(m.shards))
        assert all(1 <= s.chunks <= MAX_CHUNKS_PER_SHARD and len(s.checksum) == 16 for s in m.shards if s.cached)


@FUZZ
@given(st.binary(min_size=1, max_size=40), st.integers(min_value=0, max_value=len(VALID_DOC["schema"])))
def test_manifest_with_a_damaged_schema(noise: bytes, at: int) -> None:
    import base64

    schema = bytearray(base64.b64decode(VALID_DOC["schema"]))
    schema[at : at + len(noise)] = noise
    doc = dict(VALID_DOC, schema=base64.b64encode(bytes(schema)).decode())
    parse_or_refuse(json.dumps(doc))


@pytest.mark.parametrize(
    "damage",
    [
        "[" * 200_000,  # recursion bomb
        '{"format": 1, "shards": ' + "[" * 50_000 + "]" * 50_000 + "}",
        "1" * 10_000,  # an integer too long to parse
        json.dumps(dict(VALID_DOC, num_rows=10**400)),
        json.dumps(dict(VALID_DOC, created_at=float("inf"))),
        json.dumps(dict(VALID_DOC, shards=[dict(VALID_DOC["shards"][0], chunks=10 ** 12), *VALID_DOC["shards"][1:]])),
        json.dumps(dict(VALID_DOC, shards=[dict(VALID_DOC["shards"][0], chunks=0), *VALID_DOC["shards"][1:]])),
        json.dumps(dict(VALID_DOC, shards=[dict(VALID_DOC["shards"][0], checksum=""), *VALID_DOC["shards"][1:]])),
        json.dumps(dict(VALID_DOC, name="a\x00b")),
        json.dumps(dict(VALID_DOC, version="../v1")),
        json.dumps(dict(VALID_DOC, format=2)),
        json.dumps(dict(VALID_DOC, files={"s3://b/f.parquet": [1, 2]})),
        json.dumps(dict(VALID_DOC, files=[["s3://b/f.parquet", -1, 0]])),
        json.dumps(dict(VALID_DOC, files=[["s3://b/f.parquet", 1]])),
        json.dumps(dict(VALID_DOC, files=[[7, 1, 2]])),
        b"\xff\xfe{}",
    ],
)
def test_manifest_bombs_and_impossible_values(damage: str | bytes) -> None:
    with pytest.raises(ManifestCorrupted):
        Manifest.from_json(damage)


def test_manifest_of_the_wrong_dataset_is_refused() -> None:
    with pytest.raises(ManifestCorrupted, match="tampered"):
        Manifest.from_json(valid_manifest().to_json(), expected_name="other")
    with pytest.raises(ManifestCorrupted, match="version"):
        Manifest.from_json(valid_manifest().to_json(), expected_version="v2")


@FUZZ
@given(json_values | st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
def test_shard_records(value: Any) -> None:
    shard = valid_manifest(cached=False).shards[0]
    raw = value if isinstance(value, str) else json.dumps(value)
    try:
        out = apply_shard_record(shard, raw)
    except ManifestCorrupted:
        return
    assert out == shard or (out.cached and 1 <= out.chunks <= max(out.nbytes, 1))


# -- payloads ---------------------------------------------------------------------------


def decode_or_refuse(data: bytes, **kwargs: Any) -> pa.Table | None:
    try:
        table = decode_payload(data, **kwargs)
    except ShardCorrupted:
        return None
    # Whatever decodes is safe to read: every offset and length is in bounds.
    safe = pa.Table.from_arrays(
        [pa.chunked_array([c.view(_without_utf8(c.type)) for c in col.chunks], _without_utf8(col.type))
         for col in table.columns],
        names=table.column_names,
    )
    safe.validate(full=True)
    safe.to_pylist()
    return table


@FUZZ
@given(st.binary(max_size=600))
def test_payload_arbitrary_bytes(data: bytes) -> None:
    decode_or_refuse(data)


@FUZZ
@given(
    st.sampled_from(sorted(PAYLOADS, key=str)),
    st.lists(st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4),
    st.integers(min_value=0),
)
def test_payload_with_bytes_overwritten(compression: str | None, edits: list[tuple[int, bytes]], cut: int) -> None:
    data = bytearray(PAYLOADS[compression])
    for position, noise in edits:
        at = position % len(data)
        data[at : at + len(noise)] = noise
    data = data[: len(data) - cut % 64]
    table = decode_or_refuse(bytes(data), schema=TABLE.schema, max_rows=60)
    if table is not None:
        assert table.schema.equals(TABLE.schema)
        assert table.num_rows == 60


@FUZZ
@given(st.sampled_from(["lz4", "zstd"]), st.integers(min_value=2**31, max_value=2**63 - 1))
def test_payload_declaring_a_huge_decompressed_size(compression: str, size: int) -> None:
    data = PAYLOADS[compression]
    plain = struct.pack("<q", 60 * 8)  # the int64 column's buffer declares its real size first
    assume(plain in data)
    at = data.index(plain)
    bomb = data[:at] + struct.pack("<q", size) + data[at + 8 :]
    with pytest.raises(ShardCorrupted, match="max_decoded_bytes"):
        decode_payload(bomb)


def test_real_decompression_bomb_is_refused() -> None:
    zeros = pa.table({"z": pa.array(np.zeros(16 << 20, np.uint8))})  # 16 MiB that zstd packs into a few KiB
    payload = encode_table(zeros, compression="zstd")
    assert len(payload) < 1 << 20
    with pytest.raises(ShardCorrupted, match="declares"):
        decode_payload(payload, max_decoded_bytes=8 << 20)
    assert decode_payload(payload).num_rows == 16 << 20


def test_payload_checks_against_the_manifest() -> None:
    data = PAYLOADS[None]
    assert decode_payload(data, schema=TABLE.schema, max_rows=60).equals(TABLE)
    with pytest.raises(ShardCorrupted, match="schema"):
        decode_payload(data, schema=pa.schema([("x", pa.int64())]))
    with pytest.raises(ShardCorrupted, match="rows"):
        decode_payload(data, max_rows=59)
    bad_utf8 = encode_table(pa.table({"s": pa.array([b"ok", b"\xff\xfe"], pa.binary()).view(pa.string())}))
    decode_payload(bad_utf8)  # offsets are sound, so it is safe to hand out as binary...
    with pytest.raises(ShardCorrupted, match="UTF8"):  # ...and refused when UTF-8 is checked
        decode_payload(bad_utf8, check_utf8=True)


# -- key names --------------------------------------------------------------------------

names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=30)
versions = st.from_regex(r"\A[A-Za-z0-9_.-]{1,10}\Z")


@FEW
@given(names, names, versions, versions, st.integers(0, 100), st.integers(0, 100))
def test_distinct_datasets_never_share_a_key(a: str, b: str, va: str, vb: str, ia: int, ib: int) -> None:
    ks = KeySpace()

    def keys(name: str, version: str, index: int) -> dict[tuple[Any, ...], set[str]]:
        shard = ks.shard(name, version, index)
        return {
            (name, version, index): {shard, *(ks.chunk(shard, c) for c in range(1, 3))},
            (name, version): {ks.manifest(name, version), ks.done(name, version)},
            (name,): {ks.latest(name), ks.versions(name), ks.lock(name), ks.leases(name)},
        }

    mine, theirs = keys(a, va, ia), keys(b, vb, ib)
    for identity, names_a in mine.items():
        for other, names_b in theirs.items():
            if identity != other:
                assert not names_a & names_b, (identity, other)


@pytest.mark.parametrize(
    ("a", "b"),
    [("a:b", "a"), ("a:b", "a%3Ab"), ("a", "a "), ("{x}", "x"), ("a:s:b", "a"), ("ä", "a"), ("a/b", "a%2Fb")],
)
def test_confusable_names(a: str, b: str) -> None:
    ks = KeySpace()
    assert ks.manifest(a, "v1") != ks.manifest(b, "v1")
    assert ks.shard(a, "v1", 0) != ks.shard(b, "v1", 0)
    # No name can forge another's shard key by smuggling ':' and a version into itself.
    assert ks.shard("a:v1", "0", 0) != ks.shard("a", "v1", 0)


@FEW
@given(names, versions)
def test_metadata_of_one_dataset_shares_one_slot(name: str, version: str) -> None:
    ks = KeySpace()
    slots = {key_slot(k.encode()) for k in (ks.latest(name), ks.versions(name), ks.manifest(name, version),
                                            ks.done(name, version), ks.lock(name), ks.leases(name))}
    assert len(slots) == 1
    assert all(c.isascii() and (c.isalnum() or c in "%._-") for c in KeySpace.encode(name))
