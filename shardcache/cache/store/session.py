"""The connection under a ShardCache: the client across fork and pickle, every command with
retry and the node breaker, and the read thread pool.

A :class:`~shardcache.cache.ShardCache` is built over a session, as a redis-py client is over a
connection pool: :func:`~shardcache.cache.connect` builds the real one, and a test may pass its
own (``ShardCache(session=...)``), e.g. a subclass that fails chosen commands.

>>> session = Session(parse_url("redis://127.0.0.1:7000"))   # doctest: +SKIP
>>> session.call("GET", "sc:datasets")                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis.exceptions as rex

from ...checks import check_int
from ...errors import AccessDenied, CacheUnavailable, ManifestCorrupted, ShardCacheError
from ..breaker import NodeBreaker
from ..connection import Client, ConnectOptions, open_client
from ..keys import KeySpace
from ..retry import RetryPolicy
from ..stats import CacheStats
from ..urls import CacheURL
from .capacity import capacity_error

__all__ = ["Session"]

T = TypeVar("T")

MIN_BREAKER_COOLDOWN = 5.0
# Error replies that shardcache's scripts send on purpose (SHARDCACHE_LOCK_LOST...).
_SCRIPT_SIGNAL = "SHARDCACHE_"


class Session:
    """One Redis (Cluster) under one key prefix. Thread-safe; a forked child or an unpickled
    copy opens its own client on first use. ``stats`` counts what goes through it."""

    def __init__(
        self,
        url: CacheURL,
        *,
        options: ConnectOptions | None = None,
        prefix: str = "sc:",
        retry: RetryPolicy | None = None,
        read_concurrency: int = 4,
    ) -> None:
        self.url = url
        self.options = options or ConnectOptions()
        self.keys = KeySpace(prefix)
        self.retry = retry or RetryPolicy()
        self.read_concurrency: int = check_int("read_concurrency", read_concurrency, minimum=1,
                                               fix="pass an integer >= 1")
        self.stats = CacheStats()
        self._lock = threading.Lock()
        _INSTANCES.add(self)
        self._pid = -1
        self._client: Client | None = None
        self._is_cluster = False
        self._pool: ThreadPoolExecutor | None = None
        # A node that used up a whole deadline is not waited for again at once (see breaker.py).
        self.breaker = NodeBreaker(cooldown=max(2 * self.retry.deadline, MIN_BREAKER_COOLDOWN))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url.redacted()!r}, prefix={self.keys.prefix!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Sockets do not cross processes: rebuild from the same settings on the other side.
        return _reopen, (type(self), self.url, self.options, self.keys.prefix, self.retry, self.read_concurrency)

    # -- the client ------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The redis-py client (``RedisCluster`` or ``Redis``) of this process, opened on first use."""
        return self._ensure()

    def _ensure(self) -> Client:
        pid = os.getpid()
        if self._pid != pid or self._client is None:
            with self._lock:
                if self._pid != pid or self._client is None:
                    # After fork the parent's sockets and threads are not ours: start afresh, knowing
                    # from the parent whether this is a cluster.
                    known = self._is_cluster if self._client is not None else None
                    self._client, self._is_cluster = open_client(self.url, self.options, self.retry, cluster=known)
                    self._pool = None
                    self._pid = pid
        assert self._client is not None
        return self._client

    @property
    def is_cluster(self) -> bool:
        self._ensure()
        return self._is_cluster

    def _after_fork(self) -> None:
        """In a forked child: locks that a parent's thread held at the fork would never be
        released here, so every lock is replaced; the client is rebuilt on first use."""
        self._lock = threading.Lock()
        self.stats.after_fork()
        self.breaker.after_fork()

    def executor(self) -> ThreadPoolExecutor:
        """The pool of ``read_concurrency`` threads that concurrent reads run on."""
        self._ensure()  # a forked child drops its parent's pool here
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.read_concurrency, thread_name_prefix="shardcache-read")
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            if self._client is not None and self._pid == os.getpid():
                try:
                    self._client.close()
                except Exception:
                    pass
            self._client = None

    def node_of(self, key: str | None) -> str | None:
        """The primary that serves ``key`` (``host:port``, as in ``capacity()``); None if unknown."""
        client = self._ensure()
        if key is None or not self._is_cluster:
            return self.url.redacted()
        try:
            node = client.get_node_from_key(key)  # type: ignore[union-attr]
            return f"{node.host}:{node.port}"
        except Exception:  # the topology may be in flux; the message still helps without it
            return None

    # -- commands ----------------------------------------------------------------------

    def refresh(self, _exc: BaseException) -> None:
        """Before a retry: reload the cluster's slot map (a failover moves slots)."""
        client = self._ensure()
        if self._is_cluster:
            client.nodes_manager.initialize()  # type: ignore[union-attr]

    def on_wait(self, seconds: float) -> None:
        self.stats.add(retries=1, wait_seconds=seconds)

    def retry_call(self, run: Callable[[], T], *, what: str) -> T:
        """``run()`` under the retry policy, refreshing the topology between tries (pipelines, INFO)."""
        return self.retry.call(run, what=what, on_retry=self.refresh, on_wait=self.on_wait)

    def call(self, method: str, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
        """Run one redis-py client method with retry-until-deadline."""
        fn = getattr(self._ensure(), method.lower())
        first_key = key if key is not None else (args[0] if args and isinstance(args[0], str) else None)
        if method.upper() == "EVAL" and len(args) > 2:
            first_key = args[2]
        what = f"{method.upper()} {first_key or ''}".strip()
        node = self.node_of(first_key)
        self.breaker.check(node, what=what)
        try:
            result = self.retry.call(
                lambda: fn(*args, **kwargs),
                what=what,
                node=lambda: self.node_of(first_key),
                on_retry=self.refresh,
                on_wait=self.on_wait,
            )
        except rex.OutOfMemoryError:
            raise capacity_error(self, None, node=node) from None
        except AccessDenied:
            raise
        except CacheUnavailable as exc:
            self.breaker.trip(exc.node or node)  # the next calls to that node fail fast
            raise
        except rex.ResponseError as exc:
            if _SCRIPT_SIGNAL in str(exc):  # our own scripts' answers: their callers handle them
                raise
            keys = [str(k) for k in args[2 : 2 + int(args[1])]] if method.upper() == "EVAL" else [first_key or ""]
            raise self._reply_error(exc, what=what, keys=[k for k in keys if k]) from None
        self.breaker.reset(node)
        return result

    def _reply_error(self, exc: rex.ResponseError, *, what: str, keys: Sequence[str]) -> ShardCacheError:
        """A Redis error reply as one of ours: WRONGTYPE (something else wrote the key) is
        ManifestCorrupted naming the key and the fix; any other reply a ShardCacheError."""
        text = " ".join(str(exc).split())[:200]
        if "WRONGTYPE" not in text:
            return ShardCacheError(f"{what}: Redis answered an error ({text}); check it with `shardcache status`")
        names = sorted({n for n in map(self.keys.dataset_of, keys) if n is not None})
        where = keys[0] if len(keys) == 1 else f"one of the keys {', '.join(keys)}"
        if names:
            fix = f"remove the dataset with `shardcache rm {names[0]}` (it deletes the key too), then prefetch it again"
            if keys == [self.keys.leases(names[0])]:  # it only holds readers' leases: the dataset can stay
                fix = f"delete the key with `DEL {keys[0]}`, or {fix}"
        else:
            fix = (f"delete the key with `DEL {where}`: the datasets themselves stay cached, and a prefetch of "
                   "each (nothing is reloaded) lists it again")
        return ManifestCorrupted(
            f"the Redis key {where}{f' of dataset {names[0]!r}' if names else ''} holds a value of the wrong type "
            f"({what}: {text}); something other than shardcache wrote it: {fix}",
            dataset=names[0] if names else None, key=keys[0] if len(keys) == 1 else None,
        )


# Every live session, so that a forked child (a DataLoader worker) can replace their locks.
_INSTANCES: weakref.WeakSet[Session] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for session in list(_INSTANCES):
        session._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reopen(
    cls: type[Session], url: CacheURL, options: ConnectOptions, prefix: str, retry: RetryPolicy, read_concurrency: int
) -> Session:
    return cls(url, options=options, prefix=prefix, retry=retry, read_concurrency=read_concurrency)
