"""Removing versions (`shardcache rm`): the metadata in one script, then every chunk key they had.

`rm` is also how a user cleans up after keys something else planted or damaged, so it is
lenient where reading is strict: a key of the wrong type is logged and removed, and a
malformed manifest still has the chunks it names clearly removed.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from ...errors import ConfigError, DatasetInUse, DatasetLocked, DatasetNotFound, ManifestCorrupted
from ..keys import MAX_PARTS, validate_dataset_name, validate_version
from ..locks import dead_local_holder, lock_version
from ..manifest import MAX_CHUNKS_PER_SHARD, record_chunks
from .catalog import Catalog
from .session import Session

__all__ = ["delete", "writers"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS: leases, versions, latest, then (manifest, done) per version in ARGV[2..]. A key of the wrong
# type (planted by something else) is deleted rather than left to make every `rm` fail: a lease set
# that is not a sorted set protects nothing, and every other key here is removed or rewritten anyway.
_DELETE = """
local function failed(reply) return type(reply) == 'table' and reply['err'] ~= nil end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if failed(redis.pcall('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)) then redis.call('DEL', KEYS[1]) end
if ARGV[1] ~= '1' then
  local blocked = {}
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local v = string.match(member, '^([^|]*)|')
    for i = 2, #ARGV do
      if v == ARGV[i] or v == '*' then
        table.insert(blocked, member)
        break
      end
    end
  end
  if #blocked > 0 then return {0, blocked} end
end
local out = {}
for i = 2, #ARGV do
  local mkey = KEYS[4 + 2 * (i - 2)]
  local dkey = KEYS[5 + 2 * (i - 2)]
  local m = redis.pcall('GET', mkey)
  if failed(m) then m = false end
  table.insert(out, m or '')
  local pending = redis.pcall('HGETALL', dkey)
  if failed(pending) then pending = {} end
  table.insert(out, cjson.encode(pending))
  redis.call('DEL', mkey, dkey)
  if failed(redis.pcall('ZREM', KEYS[2], ARGV[i])) then redis.call('DEL', KEYS[2]) end
end
local newest = redis.pcall('ZREVRANGE', KEYS[2], 0, 0)
if failed(newest) then
  redis.call('DEL', KEYS[2])
  newest = {}
end
if newest[1] then redis.call('SET', KEYS[3], newest[1]) else redis.call('DEL', KEYS[3]) end
return {1, out, redis.call('ZCARD', KEYS[2])}
"""

# KEYS: lock keys of one dataset. Their holders' tokens ('' for a free lock, or a key of the wrong type).
_LOCKS = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.pcall('GET', key)
  if type(v) ~= 'string' then v = '' end
  out[i] = v
end
return out
"""


def delete(
    session: Session, catalog: Catalog, name: str, version: str | None = None, *, all_old: bool = False,
    force: bool = False,
) -> list[str]:
    """Remove ``version`` (default: every version) of ``name``; return the versions removed
    (``ShardCache.delete`` has the details)."""
    keys = session.keys
    validate_dataset_name(name)
    if version is not None and all_old:
        raise ConfigError(f"give version={version!r} or all_old=True, not both")
    # Keys of the wrong type do not stop `rm`: it is how a user cleans up after them (the script
    # deletes them); each is named in a warning.
    broken = False
    try:
        versions = catalog.versions(name)
    except ManifestCorrupted as exc:
        log.warning("%s; `rm` goes on without it", exc)
        versions, broken = [], True
    latest = _lenient(lambda: catalog.latest_version(name), None)
    latest = latest if isinstance(latest, str) and _is_version(latest) else None
    if version is not None:
        validate_version(version)
        present = version in versions or _lenient(
            lambda: session.call("GET", keys.manifest(name, version)), b"") is not None
        if not present:
            raise DatasetNotFound(
                f"dataset {name!r} has no version {version!r}; versions: {', '.join(versions) or 'none'}",
                dataset=name, version=version,
            )
        targets = [version]
    elif all_old:
        newest = latest if latest in versions else (versions[-1] if versions else None)
        kept = {newest, _newest_complete(session, name, versions, newest)}
        targets = [v for v in versions if v not in kept]
    else:
        targets = versions or ([latest] if broken and latest else [])
        if not targets and not broken and name not in _lenient(catalog.datasets, [name]):
            raise DatasetNotFound(f"dataset {name!r} is not in the cache; see `shardcache ls`", dataset=name)
    if not targets and not (broken and version is None and not all_old):
        return []
    # Read which shards each version has before the script removes that record: if the
    # script's reply is lost and it is retried, the retry finds the manifests gone.
    before: dict[str, tuple[Any, Any]] = {}
    for v in targets:
        manifest_key, done_key = keys.manifest(name, v), keys.done(name, v)
        before[v] = (_lenient(functools.partial(session.call, "GET", manifest_key), None),
                     _lenient(functools.partial(session.call, "HGETALL", done_key), {}))
    if not force:
        _refuse_if_written(session, name, before, latest=latest)
    script_keys = [keys.leases(name), keys.versions(name), keys.latest(name)]
    for v in targets:
        script_keys += [keys.manifest(name, v), keys.done(name, v)]
    reply = session.call("EVAL", _DELETE, len(script_keys), *script_keys, "1" if force else "0", *targets)
    if int(reply[0]) == 0:
        holders = [m.decode(errors="replace") if isinstance(m, bytes) else str(m) for m in reply[1]]
        raise DatasetInUse(
            f"dataset {name!r} is in use by {len(holders)} reader(s) ({', '.join(holders[:3])}); "
            "wait for the jobs to finish or their leases to expire, or pass force",
            dataset=name, leases=holders,
        )
    outs = reply[1]
    for i, v in enumerate(targets):
        manifest_raw, records = before[v]
        counts = _chunk_counts(name, v, [manifest_raw, outs[2 * i]], [records, _flat_pairs(outs[2 * i + 1])])
        _unlink(session, name, (keys.chunk(keys.shard(name, v, index), c)
                                for index, count in sorted(counts.items()) for c in range(count)))
    if int(reply[2]) == 0:
        try:
            session.call("SREM", keys.datasets(), name)
            if session.call("ZCARD", keys.versions(name)):  # a writer began a new version meanwhile
                session.call("SADD", keys.datasets(), name)
        except ManifestCorrupted as exc:  # the dataset list is broken: the dataset is gone all the same
            log.warning("%s", exc)
    return targets


def _refuse_if_written(session: Session, name: str, before: Mapping[str, tuple[Any, Any]], *, latest: str | None
                       ) -> None:
    """DatasetLocked when a live writer is writing one of the versions to remove (see :func:`writers`): a
    prefetch loading it, or restoring evicted shards of a complete one. Forced, the removal goes ahead and
    the writer then fails (its shards need the manifest) rather than re-create any of it."""
    for version, (manifest_raw, records) in before.items():
        state = _state(manifest_raw)
        # A writer lock that names no version (taken by an older shardcache, or `ShardCache.lock`)
        # counts for the newest version while it loads, as a prefetch begins its version as the newest.
        found = _live_writers(session, name, version, parts=_parts(records),
                              latest=latest if state == "loading" else None)
        for what, holder in found:
            doing = "is still loading" if state == "loading" else "is being written"
            raise DatasetLocked(
                f"version {version} of {name!r} {doing}: {what} ({holder}); wait for it to finish, or stop "
                "it, or remove it anyway with force (add --force to the same `shardcache rm` command; "
                "force=True in Python): the writer then fails and leaves nothing of the version behind",
                dataset=name,
            )


def writers(session: Session, catalog: Catalog, name: str, version: str) -> list[str]:
    """Who is loading ``version`` of ``name`` now, e.g. ``["a prefetch is writing it (HOST:PID:TOKEN)"]``;
    [] when none is (a version left ``loading`` by a prefetch that failed or was killed)."""
    latest = catalog.latest_version(name)
    parts = catalog.recorded_parts(name, version) or 0
    return [f"{what} ({holder})" for what, holder in _live_writers(session, name, version, parts=parts,
                                                                  latest=latest)]


def _live_writers(session: Session, name: str, version: str, *, parts: int, latest: str | None
                  ) -> list[tuple[str, str]]:
    """``(what, holder)`` of each live lock on writing ``version``: the dataset's writer lock when its
    token names ``version`` (or names none and ``version`` is ``latest``), and the locks of its ``parts``.
    A lock whose holder died on this host does not count (it only waits out its TTL)."""
    keys = session.keys
    lock_keys = [(keys.lock(name), "a prefetch is writing it")]
    lock_keys += [(keys.part_lock(name, version, i), f"part {i} of its prefetch is writing it")
                  for i in range(min(parts, MAX_PARTS))]
    # One script: the locks share the dataset's hash tag, so one slot (and GET in a script needs no
    # more than README's ACL rule, which has no MGET).
    held = session.call("EVAL", _LOCKS, len(lock_keys), *(k for k, _ in lock_keys))
    out: list[tuple[str, str]] = []
    for i, ((_, what), raw) in enumerate(zip(lock_keys, held, strict=True)):
        holder = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if not isinstance(holder, str) or not holder or dead_local_holder(holder):
            continue
        if i == 0 and (lock_version(holder) or latest) != version:
            continue  # the writer lock is held to write another version
        out.append((what, holder))
    return out


def _newest_complete(session: Session, name: str, versions: Sequence[str], newest: str | None) -> str | None:
    """While ``newest`` is still loading (or was left loading by a failed prefetch), the newest complete
    version before it, which ``all_old`` keeps too: else the last committed data would go, leaving
    only a version that may never commit. None when ``newest`` is complete or none is."""
    if newest is None:
        return None
    read = functools.partial(_lenient, default=None)
    if _state(read(functools.partial(session.call, "GET", session.keys.manifest(name, newest)))) != "loading":
        return None
    for version in reversed(versions):
        if version != newest and _state(read(functools.partial(session.call, "GET",
                                                                 session.keys.manifest(name, version)))) == "complete":
            return version
    return None


def _state(manifest_raw: Any) -> str | None:
    """The ``state`` of a raw manifest; None if it cannot be read (`rm` is lenient)."""
    if not isinstance(manifest_raw, (bytes, str)) or not manifest_raw:
        return None
    try:
        doc = json.loads(manifest_raw)
    except (ValueError, RecursionError):
        return None
    state = doc.get("state") if isinstance(doc, dict) else None
    return state if isinstance(state, str) else None


def _parts(records: Any) -> int:
    """The number of parts recorded in a raw ``done`` record (0: not loaded in parts)."""
    if not isinstance(records, Mapping):
        return 0
    raw = records.get(b"parts", records.get("parts"))
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return min(int(text), MAX_PARTS) if isinstance(text, str) and text.isascii() and text.isdigit() else 0


def _lenient(read: Callable[[], T], default: T) -> T:
    """``read()``, or ``default`` when a key it reads has the wrong type (logged): for `rm`."""
    try:
        return read()
    except ManifestCorrupted as exc:
        log.warning("%s; `rm` goes on without it", exc)
        return default


def _unlink(session: Session, name: str, keys: Iterable[str], *, batch: int = 500) -> None:
    """UNLINK ``keys`` in pipelined batches (small replies, so pipelining pays here)."""
    client = session.client
    todo = iter(keys)
    while chunk := list(itertools.islice(todo, batch)):

        def run(chunk: Sequence[str] = chunk) -> None:
            pipe = client.pipeline(transaction=False)
            for k in chunk:
                pipe.unlink(k)
            pipe.execute()

        session.retry_call(run, what=f"deleting shards of {name!r}")


def _flat_pairs(raw: Any) -> dict[Any, Any]:
    """A HGETALL reply that came through Lua's cjson: a flat ``[field, value, ...]`` list
    (an empty one encodes as ``{}``)."""
    try:
        flat = json.loads(raw) if raw else []
    except (ValueError, RecursionError):
        return {}
    if not isinstance(flat, list):
        return {}
    return dict(zip(flat[::2], flat[1::2], strict=False))


def _chunk_counts(
    name: str, version: str, manifests: Sequence[Any], records: Sequence[Mapping[Any, Any]]
) -> dict[int, int]:
    """Shard index -> number of chunk keys, from raw manifests and ``done`` records; lenient,
    since a damaged manifest is exactly what `rm` must still clean up, but capped per shard."""
    counts: dict[int, int] = {}
    for raw in manifests:
        if not raw:
            continue
        try:
            doc = json.loads(raw)
            shards = doc["shards"] if isinstance(doc, dict) and isinstance(doc.get("shards"), list) else []
        except (ValueError, RecursionError):
            log.warning("the manifest of %r %s is malformed; only shards it names clearly are removed", name, version)
            continue
        for index, s in enumerate(shards):
            chunks = s.get("chunks") if isinstance(s, dict) else None
            count = chunks if isinstance(chunks, int) and not isinstance(chunks, bool) else 1
            counts[index] = max(counts.get(index, 1), min(max(count, 1), MAX_CHUNKS_PER_SHARD))
    for pairs in records:
        for field, value in pairs.items():
            text = field.decode(errors="replace") if isinstance(field, bytes) else str(field)
            if text.isascii() and text.isdigit() and len(text) < 12:
                counts[int(text)] = max(counts.get(int(text), 1), record_chunks(value))
    return counts


def _is_version(text: str) -> bool:
    try:
        validate_version(text)
    except ConfigError:
        return False
    return True
