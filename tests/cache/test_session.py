"""A ShardCache built over a session that a test substitutes (redis-py's connection_pool style)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from shardcache.cache import ShardCache, parse_url
from shardcache.cache.store import Session
from shardcache.errors import CacheUnavailable, ConfigError

from .conftest import TEST_RETRY, tables, write_version


class RecordingSession(Session):
    """Records every command; fails those on the keys in ``down`` as an unreachable node would."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []
        self.down: set[str] = set()

    def call(self, method: str, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
        self.commands.append(method.upper())
        if args and args[0] in self.down:
            raise CacheUnavailable(f"{method} {args[0]}: injected", node="injected:0")
        return super().call(method, *args, key=key, **kwargs)


@pytest.fixture
def session(url: str) -> RecordingSession:
    return RecordingSession(parse_url(url), retry=TEST_RETRY)


def test_every_command_goes_through_the_session(session: RecordingSession, name: str) -> None:
    with ShardCache(session=session) as cache:
        assert (cache.session, cache.keys, cache.stats) == (session, session.keys, session.stats)
        m = write_version(cache, name, tables(2))
        assert cache.manifest(name) == m
        assert {"SADD", "EVAL", "GET"} <= set(session.commands)  # shard records: EVAL (the manifest must exist)
        assert cache.delete(name) == ["v1"]
        assert "SREM" in session.commands


def test_a_substituted_session_injects_a_fault(session: RecordingSession, name: str) -> None:
    parts = tables(3)
    with ShardCache(session=session) as cache:
        m = write_version(cache, name, parts)
        session.down.add(m.shards[1].key)
        session.breaker.trip("elsewhere:0")  # an open breaker routes reads through `call`, the session's
        got = dict(cache.get_shards(m, range(3), errors="return"))
        assert isinstance(got[1], CacheUnavailable)
        assert [cache.get_table(m, i).equals(parts[i]) for i in (0, 2)] == [True, True]
        cache.delete(name)


def test_pickles_with_its_kind_of_session(session: RecordingSession) -> None:
    with ShardCache(session=session, chunk_size="1MiB") as cache:
        clone = pickle.loads(pickle.dumps(cache))
        try:
            assert type(clone.session) is RecordingSession
            assert clone.session is not session
            assert (clone.chunk_size, clone.keys.prefix, clone.url) == (cache.chunk_size, cache.keys.prefix, cache.url)
            assert clone.ping()
        finally:
            clone.close()


def test_a_url_or_a_session_not_both(session: RecordingSession) -> None:
    with pytest.raises(ConfigError, match="url or a session"):
        ShardCache()
    with pytest.raises(ConfigError, match="brings its own"):
        ShardCache(session.url, session=session)
    with pytest.raises(ConfigError, match="brings its own"):
        ShardCache(session=session, prefix="other:")
