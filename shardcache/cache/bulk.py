"""GET of large values straight into an Arrow buffer, and SET straight from one: one copy each way.

redis-py hands a bulk reply through hiredis's growing buffer and then into a new
``bytes`` object, so every MiB read is copied three times or more under the GIL; on
this kind of machine that halves what four reader threads get (see
benchmarks/store_throughput.py). Here the reply's header is parsed by hand and the
payload is received with ``recv_into`` into a buffer from Arrow's memory pool, which
is reused from call to call and is never zero-filled: one copy, kernel to user.

Given a ``hasher`` (an ``xxhash`` object), :func:`read_bulk` also feeds it each piece of the
payload as it arrives, while the piece is still in the CPU's cache: hashing it there costs less
than half of hashing the whole value again from memory afterwards.

Given ``into`` (``(offset, destination)`` pairs), :func:`read_bulk` receives those ranges of the
payload straight into their destinations instead of the buffer: the loader has a shard's image
column land in the batch tensors this way (dataloader/inplace.py), with no copy of its own. The
buffer is then an anonymous mapping whose pages under those ranges are never touched, so they take
no memory.

Only the plain case is handled: a bulk string (``$len``) or a null (``$-1``, or ``_`` in
RESP3, which redis-py 8 speaks by default). Anything
else (``MOVED``, ``ASK``, ``WRONGTYPE``, a RESP3 push) raises :class:`NotBulk` once the
reply line has been consumed, or drops the connection when it cannot be, and the
caller repeats the GET through redis-py, which handles redirects and errors. The
connection comes from, and goes back to, redis-py's own pool for the node.

The write path is the mirror image: redis-py's hiredis packer joins the command and a
multi-MiB value into one new ``bytes`` before sending it, so :func:`write_bulk` sends the
RESP header and then the value's own memory with ``sendall``, and expects ``+OK``.

>>> buf = read_bulk(client, "sc:s:ds:v1:0", cluster=True)   # doctest: +SKIP
>>> write_bulk(client, "sc:s:ds:v1:0", buf, cluster=True, px=None)   # doctest: +SKIP
"""

from __future__ import annotations

import mmap
import os
import socket
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import redis.exceptions as rex

__all__ = ["Into", "NotBulk", "read_bulk", "write_bulk"]

_CRLF = b"\r\n"
_ONE_LINE = frozenset(b"-+:")  # error, simple string, integer: fully read once the line is
_HEADER_MAX = 64 * 1024  # an error line longer than this is not worth parsing: drop the connection
_HASH_STEP = 256 * 1024  # received, then hashed at once while still in the CPU's cache
_BULK_MAX = 1 << 32  # Redis refuses values above 512 MiB (proto-max-bulk-len) unless configured otherwise


class NotBulk(Exception):
    """The reply was not the plain one (a bulk string for GET, ``+OK`` for SET); repeat the
    command through redis-py."""


def _pool_of(client: Any, key: str, cluster: bool) -> Any:
    if cluster:
        return client.get_redis_connection(client.get_node_from_key(key)).connection_pool
    return client.connection_pool


Into = Sequence[tuple[int, memoryview]]


def read_bulk(client: Any, key: str, *, cluster: bool, hasher: Any = None, into: Into = ()) -> pa.Buffer | None:
    """``GET key`` on the node that serves it; the value as a ``pyarrow.Buffer``, None if absent.

    ``hasher`` (optional, with an ``update`` method) is fed the value's bytes in order; after an
    exception it holds part of them. ``into`` lists ``(offset, destination)``: the value's bytes
    from ``offset`` are received straight into ``destination`` (a writable byte memoryview), and
    the returned buffer's bytes there are left undefined; the ranges must not overlap. Raises
    NotBulk for any other reply, or a value too short for ``into``, redis
    ``ConnectionError``/``TimeoutError`` when the socket fails (the connection is then dropped),
    and whatever the pool raises.
    """
    pool = _pool_of(client, key, cluster)
    conn = pool.get_connection()
    try:
        return _exchange(conn, key, hasher, into)
    finally:
        pool.release(conn)


def write_bulk(client: Any, key: str, value: Any, *, cluster: bool, px: int | None) -> None:
    """``SET key value [PX px]`` on the node that serves ``key``, sending ``value`` (any buffer) in place.

    Raises NotBulk for any reply but ``+OK`` (an error line is read whole, so the connection stays
    in step), redis ``ConnectionError``/``TimeoutError`` when the socket fails (the connection is
    then dropped), and whatever the pool raises. SET is idempotent, so the caller may repeat it.
    """
    pool = _pool_of(client, key, cluster)
    conn = pool.get_connection()
    try:
        _exchange_set(conn, key, memoryview(value).cast("B"), px)
    finally:
        pool.release(conn)


def _exchange_set(conn: Any, key: str, view: memoryview, px: int | None) -> None:
    if conn._sock is None:
        conn.connect()
    sock = conn._sock
    if sock is None:
        raise NotBulk("not connected")
    args = [b"SET", key.encode()]
    tail = [b"PX", str(px).encode()] if px is not None else []
    head = b"*%d\r\n" % (3 + len(tail)) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    head += b"$%d\r\n" % view.nbytes
    rest = b"\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in tail)
    with _socket_errors(conn, "writing to"):
        sock.sendall(head)
        sock.sendall(view)
        sock.sendall(rest)
        line = bytearray(256)
        filled, end = _read_line(sock, line)
        if end < 0 or line[0] not in _ONE_LINE or end + 2 != filled:
            conn.disconnect()  # a reply we cannot read to its end: the stream is out of step
            raise NotBulk(bytes(line[: max(end, 0)][:200]).decode(errors="replace") or "an unreadable reply")
        if line[:end] != b"+OK":
            raise NotBulk(bytes(line[:end][:200]).decode(errors="replace"))


def _exchange(conn: Any, key: str, hasher: Any = None, into: Into = ()) -> pa.Buffer | None:
    conn.send_command("GET", key)
    sock = conn._sock  # private, but the only way around the parser; None means not connected
    if sock is None:
        raise NotBulk("not connected")
    with _socket_errors(conn, "reading from"):
        head = bytearray(256)
        filled, end = _read_line(sock, head)
        if end < 0:  # a line we could not read to its end: the stream is out of step
            conn.disconnect()
            raise NotBulk("an overlong reply line")
        if head[0] == ord("_") and end == 1:  # RESP3's null (redis-py 8 speaks RESP3 by default)
            return None
        if head[0] != ord("$"):
            if head[0] not in _ONE_LINE:  # e.g. a multi-line RESP3 reply we did not consume
                conn.disconnect()
            raise NotBulk(bytes(head[:end][:200]).decode(errors="replace"))
        length = int(head[1:end])
        if length < 0:
            return None
        if length > _BULK_MAX:
            conn.disconnect()
            raise NotBulk(f"a bulk reply of {length} bytes")
        total = length + 2
        got = filled - end - 2
        if got > total:  # more than one reply arrived: the stream is out of step
            conn.disconnect()
            raise NotBulk("bytes after a bulk reply")
        buf = _sparse.buffer(total, into) if into else pa.allocate_buffer(total)
        view = memoryview(buf).cast("B")
        view[:got] = head[end + 2 : filled]
        try:
            pieces = _pieces(view, length, into)
        except ValueError as exc:
            conn.disconnect()  # the value is left unread in the socket
            raise NotBulk(str(exc)) from None
        step = total if hasher is None else _HASH_STEP
        for start, stop, target, placed in pieces:
            done = min(max(got - start, 0), stop - start)  # bytes of this piece among the first ones
            if done and placed:
                target[:done] = view[start : start + done]
            if hasher is not None:
                _feed(hasher, target, 0, min(done, length - start))
            while done < stop - start:
                n = sock.recv_into(target[done : done + min(step, stop - start - done)])
                if n == 0:
                    raise OSError("the server closed the connection")
                if hasher is not None:
                    _feed(hasher, target, done, min(done + n, length - start))
                done += n
            got = max(got, stop)
        if view[length:total] != _CRLF:
            conn.disconnect()
            raise NotBulk("a bulk reply without its trailing CRLF")
        return buf.slice(0, length)


class _SparseRegions:
    """Anonymous mappings for values whose ``into`` ranges go elsewhere, reused once nothing views them.

    The pages under those ranges are never touched, so they take no memory, where a buffer from
    Arrow's pool is recycled memory, resident already. A mapping per value would be slower (mapping,
    faulting in and unmapping cost more than the memory saved), hence the reuse; a reused region first
    gives back the pages its last value touched. A region is free once the memoryview it lent is gone:
    every Arrow buffer and array over the value holds it. Private mappings: a forked child gets copies
    on write, and starts a pool of its own.
    """

    STEP = 1 << 20  # sizes rounded up to this, so that shards of a dataset share regions
    KEEP = 32  # about the shards a loader process holds at once

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regions: list[tuple[mmap.mmap, weakref.ref[memoryview]]] = []
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        # A thread of the parent may have held the lock when it forked: both are the parent's.
        self._lock = threading.Lock()
        self._regions = []

    def buffer(self, nbytes: int, holes: Into) -> pa.Buffer:
        """A writable buffer of ``nbytes`` whose ``holes`` (``(offset, destination)``, as ``into``) take
        no memory until written."""
        size = -(-max(nbytes, 1) // self.STEP) * self.STEP
        with self._lock:
            free = next((k for k, (r, lent) in enumerate(self._regions) if len(r) == size and lent() is None), None)
            if free is None:
                region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
            else:
                region = self._regions[free][0]
                _drop_pages(region, holes)
            view = memoryview(region)[:nbytes]  # (a slice of a pa.Buffer would be read-only)
            if free is not None:
                self._regions[free] = (region, weakref.ref(view))
            elif len(self._regions) < self.KEEP:
                self._regions.append((region, weakref.ref(view)))
        return pa.py_buffer(view)


def _drop_pages(region: mmap.mmap, holes: Into) -> None:
    """Give back the whole pages inside ``holes`` that an earlier value touched (a range of another
    row count, or rows received here for another worker): they become untouched zero pages again.
    Pages that are not there cost nothing to drop."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    for offset, destination in holes:
        start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
        stop = (offset + destination.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if stop > start:
            region.madvise(mmap.MADV_DONTNEED, start, stop - start)


_sparse = _SparseRegions()


def _pieces(view: memoryview, length: int, into: Into) -> list[tuple[int, int, memoryview, bool]]:
    """``(start, stop, target, placed)`` pieces covering the value and its CRLF in order: ``into``'s
    ranges are received into their destinations (placed), the rest into ``view`` at the same offsets."""
    pieces, at = [], 0
    for offset, dest in sorted(into, key=lambda item: item[0]):
        if offset < at or offset + dest.nbytes > length:
            raise ValueError(f"a value of {length} bytes has no room for {dest.nbytes} bytes at {offset}")
        if offset > at:
            pieces.append((at, offset, view[at:offset], False))
        pieces.append((offset, offset + dest.nbytes, dest, True))
        at = offset + dest.nbytes
    pieces.append((at, len(view), view[at:], False))
    return pieces


def _feed(hasher: Any, view: memoryview, start: int, end: int) -> None:
    if end > start:
        hasher.update(view[start:end])


@contextmanager
def _socket_errors(conn: Any, doing: str) -> Iterator[None]:
    """Socket failures as redis-py's errors, the connection dropped (its stream is out of step)."""
    try:
        yield
    except TimeoutError:  # socket.timeout
        conn.disconnect()
        raise rex.TimeoutError(f"Timeout {doing} {conn.host}:{conn.port}") from None
    except (OSError, ValueError) as exc:
        conn.disconnect()
        raise rex.ConnectionError(f"Error while {doing} {conn.host}:{conn.port}: {exc}") from None


def _read_line(sock: socket.socket, head: bytearray) -> tuple[int, int]:
    """Receive until ``head`` holds a CRLF; return (bytes received, index of CRLF or -1).

    Reads at most what fits in ``head`` (growing it up to _HEADER_MAX for long error lines);
    the bytes after the CRLF are the start of the payload.
    """
    filled = 0
    while True:
        if filled == len(head):
            if len(head) >= _HEADER_MAX:
                return filled, -1
            head.extend(bytes(len(head)))
        n = sock.recv_into(memoryview(head)[filled:])
        if n == 0:
            raise OSError("the server closed the connection")
        start = max(filled - 1, 0)
        filled += n
        end = head.find(_CRLF, start, filled)
        if end >= 0:
            if head[0] != ord("$") and end + 2 != filled:
                # Bytes after a one-line reply: not ours to leave in the socket's stead.
                return filled, -1
            return filled, end
