"""README's minimal ACL rule for shardcache, and how the tests give it to a user on one node.

Both the store-level tests (tests/cache/test_security.py) and the end-to-end suite here use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

# Keys under the default prefix only; no pub/sub; exactly the commands shardcache sends
# (directly, from its Lua scripts, and redis-py's cluster client: CLUSTER SLOTS, COMMAND,
# and ASKING while slots migrate). README's "Access control" section shows this rule.
MINIMAL_ACL_RULE = (
    "resetkeys ~sc:* resetchannels -@all "
    "+get +set +del +unlink +exists +strlen +hget +hset +hsetnx +hdel +hgetall +sadd +srem +smembers "
    "+zadd +zrange +zrevrange +zrangebyscore +zrem +zremrangebyscore +zcard +pexpire +pexpireat "
    "+eval +time +ping +info +cluster|slots +command +asking"
)
MINIMAL_ACL: tuple[str, ...] = tuple(MINIMAL_ACL_RULE.split())
# README: on Redis 7.2+ and Valkey, where redis-py names its connections; Redis 7.0 refuses it.
SETINFO_ACL = "+client|setinfo"


def set_acl_user(node: redis.Redis, user: str, password: str, rule: Sequence[str]) -> None:
    """(Re)create ``user`` on ``node`` with ``rule``, plus ``+client|setinfo`` where the server has
    that command (Redis 7.2+, Valkey)."""
    args = ["ACL", "SETUSER", user, "reset", "on", f">{password}", *rule]
    try:
        node.execute_command(*args, SETINFO_ACL)
    except redis.ResponseError as exc:
        assert "Unknown command" in str(exc)  # noqa: PT017  (Redis < 7.2: no CLIENT SETINFO)
        node.execute_command(*args)
