"""Parsing cache URLs: the accepted forms, malformed ones, and a password that never shows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardcache.cache import CacheURL, parse_url
from shardcache.cache.urls import resolve_url
from shardcache.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seeds", "tls"),
    [
        ("redis://h:7000", (("h", 7000),), False),
        ("redis://h", (("h", 6379),), False),
        ("rediss://h:6380", (("h", 6380),), True),
        ("redis://h1:7000,h2:7001,h3:7002", (("h1", 7000), ("h2", 7001), ("h3", 7002)), False),
        ("redis://h1:7000, redis://h2:7001", (("h1", 7000), ("h2", 7001)), False),
        ("rediss://h1:1,rediss://h2:2", (("h1", 1), ("h2", 2)), True),
        ("redis://[::1]:7000,[::1]:7001", (("::1", 7000), ("::1", 7001)), False),
        ("  redis://h:1/  ", (("h", 1),), False),
    ],
)
def test_accepted_forms(text: str, seeds: tuple[tuple[str, int], ...], tls: bool) -> None:
    parsed = parse_url(text)
    assert (parsed.seeds, parsed.tls) == (seeds, tls)


def test_credentials_and_database() -> None:
    parsed = parse_url("redis://reader:p%40ss%2Cw0rd@h:1/2")
    assert (parsed.username, parsed.password, parsed.db) == ("reader", "p@ss,w0rd", 2)
    assert parsed.redacted() == "redis://reader:***@h:1"
    assert "p@ss" not in repr(parsed)
    assert "p@ss" not in str(parsed)
    assert parse_url("redis://:secret@h:1").redacted() == "redis://:***@h:1"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("localhost:6379", "must start with redis://"),
        ("http://h:1", "scheme 'http'"),
        ("redis://h:1,,h:2", "empty seed"),
        ("redis://h:1,rediss://h:2", "same scheme"),
        ("redis://:7000", "no host"),
        ("redis://h:port", "invalid port"),
        ("redis://h:0", "invalid port"),
        ("redis://h:65536", "invalid port"),
        ("redis://h:1,h:99999", "invalid port"),
        ("redis://[::1", "malformed"),
        ("redis://h:1/zero", "database number"),
        ("redis://h:1?ssl=true", "query"),
        ("redis://h:1#frag", "query or fragment"),
        ("redis://h:1/1,h:2/2", "another database"),
        ("redis://h:1,u:pw@h:2", "carries credentials"),
    ],
)
def test_malformed_urls(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_url(text)


def test_non_string_url() -> None:
    with pytest.raises(ConfigError):
        parse_url(None)  # type: ignore[arg-type]


# A password that is not percent-encoded may break the URL; the error must still not show it.
# "Zq" marks both ends, so even a fragment of the password in a message is caught.
passwords = st.text(alphabet=st.characters(codec="ascii", categories=("L", "N", "P", "S")), max_size=20)


@settings(max_examples=300, deadline=None)
@given(middle=passwords, user=st.sampled_from(["", "u"]), tail=st.sampled_from(["", ",h2:7001", "/1"]))
def test_password_never_in_errors_or_reprs(middle: str, user: str, tail: str) -> None:
    password = f"Zq{middle}Zq"
    text = f"redis://{user}:{password}@h1:7000{tail}"
    try:
        parsed = parse_url(text)
    except ConfigError as exc:
        message = str(exc)
    else:
        message = f"{parsed!r} {parsed.redacted()}"
    assert "Zq" not in message


def test_resolution_order() -> None:
    env = {"SHARDCACHE_REDIS_URL": "redis://env-host:1", "SHARDCACHE_REDIS_PASSWORD": "from-env"}
    assert resolve_url(None, env=env) == CacheURL(seeds=(("env-host", 1),), password="from-env")
    assert resolve_url("redis://arg:2", env=env).seeds == (("arg", 2),)
    assert resolve_url("redis://:in-url@arg:2", env=env).password == "in-url"
    assert resolve_url("redis://:in-url@arg:2", env=env, password="argument").password == "argument"
    assert resolve_url("redis://arg:2", env={"SHARDCACHE_REDIS_USERNAME": "bob"}).username == "bob"
    with pytest.raises(ConfigError, match="SHARDCACHE_REDIS_URL"):
        resolve_url(None, env={})
