"""One pipelined round trip to Redis: pre-serialized commands out, every reply back.

Both the read path and the writer build their RESP bytes in augur.features.commands (the read
path per key, the writer for whole batches) and send them here. How a round trip waits for
its replies is the caller's Waiting (augur.features.waiting): BLOCKING unless a server whose
calls take turns on one thread hands in its own. Replies are parsed by a hiredis reader
straight off the socket: redis-py's per-reply path costs several microseconds a reply,
which is most of a 100-entity read's client time. redis-py still owns the connection:
pooling, the login handshake, TLS and timeouts.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
from collections.abc import Callable

import hiredis
import redis

from augur.features.native import native
from augur.features.waiting import BLOCKING, Waiting


class DeadlineTimeout(redis.TimeoutError):
    """A round trip that timed out within the time a caller's own deadline left it, shorter
    than the configured read timeout: the caller ran out of time, which says nothing of
    whether Redis is healthy (the circuit breaker does not count it)."""


class OwnConnections:
    """Connections of a thread's own, made from the client's pool settings and kept: one per
    round trip in flight on the thread (one, unless its calls wait for Redis in turns: see
    augur.features.waiting). A read then skips the pool's checkout and check-in, about 50 us in
    redis-py 7.4 (a non-blocking recv looking for stray data, observability hooks): a sixth
    of a one-entity read. No stray data can be left on these: a round trip reads every reply
    or disconnects."""

    def __init__(self, client: redis.Redis):
        self._pool = client.connection_pool
        self._local = threading.local()

    def get(self):
        idle = getattr(self._local, "idle", None)
        if idle is None:
            idle = self._local.idle = []
        return idle.pop() if idle else self._pool.make_connection()

    def put(self, conn) -> None:
        """Give back a connection `get` gave this thread."""
        self._local.idle.append(conn)


def round_trip(
    client: redis.Redis,
    payload: bytes,
    count: int,
    timeout_s: float | None = None,
    own: OwnConnections | None = None,
    *,
    raw: bool = False,
    waiting: Waiting = BLOCKING,
) -> list | bytearray:
    """Send `payload` (`count` commands) on one connection (this thread's own, else one from
    the pool) and read every reply, waiting for them as `waiting` says.

    `raw` (only with augur.features._native built): the replies as the bytes received, all of
    them there and none an error, for the caller to decode in C; the rare RESP its scanner
    does not know (RESP3 attributes) comes back parsed, a list, as without `raw`.

    `timeout_s` bounds this round trip's socket waits (a caller's remaining deadline),
    never beyond the client's configured read timeout. A connection found dead (Redis
    restarted since it was last used) is replaced once; any failure disconnects it, so a
    late reply can never be read by the next caller. Error replies raise
    redis.ResponseError."""
    pool = client.connection_pool
    wait = None if waiting is BLOCKING else waiting.wait_readable
    for attempt in (0, 1):
        conn = own.get() if own is not None else pool.get_connection()
        narrowed = False
        try:
            if conn._sock is None:  # new, or dropped after a failure
                waiting.run_elsewhere(conn.connect)
            sock = conn._sock
            # Only a deadline shorter than the configured timeout narrows it, set on the
            # socket itself: the replies are read from it here, never by redis-py's parser,
            # and redis-py's setter costs some 12 us a call, each way.
            narrowed = timeout_s is not None and timeout_s < (conn.socket_timeout or math.inf)
            if narrowed:
                sock.settimeout(max(timeout_s, 0.001))
            conn.send_packed_command([payload], check_health=False)
            replies = _read_raw(sock, count, wait) if raw else _read_replies(sock, count, wait)
            if narrowed:
                sock.settimeout(conn.socket_timeout)  # back to the configured timeout
        except (redis.ConnectionError, ConnectionError) as e:
            conn.disconnect()
            if attempt:
                raise redis.ConnectionError(f"Redis connection lost: {e}") from e
            continue
        except TimeoutError as e:  # the socket's own timeout
            conn.disconnect()
            if narrowed:
                raise DeadlineTimeout(
                    f"Redis did not answer within the {timeout_s * 1000:.0f} ms the call's "
                    "deadline left for its read"
                ) from e
            raise redis.TimeoutError("Timeout reading from Redis") from e
        except BaseException:
            conn.disconnect()
            raise
        finally:
            if own is None:
                pool.release(conn)
            else:
                own.put(conn)
        if isinstance(replies, list):
            _raise_errors(replies)
        return replies
    raise AssertionError("unreachable")


class Channel:
    """One pooled connection held for a conversation of several pipelines (the writer's):
    send without waiting, receive later, in order. Any failure drops the connection."""

    def __init__(self, client: redis.Redis, waiting: Waiting = BLOCKING):
        self._pool = client.connection_pool
        self._conn = None
        self._waiting = waiting
        self._wait: Callable[[socket.socket], None] | None = None

    def __enter__(self) -> Channel:
        waiting = self._waiting
        self._wait = None if waiting is BLOCKING else waiting.wait_readable
        self._conn = self._pool.get_connection()
        try:
            self._conn.connect()
        except BaseException:
            self._release(failed=True)
            raise
        return self

    def __exit__(self, kind, error, trace) -> None:
        self._release(failed=kind is not None)

    def send(self, payload: bytes) -> None:
        self._conn.send_packed_command([payload], check_health=False)

    def receive(self, count: int, integers: int = 0) -> list:
        """The next `count` replies, after skipping `integers` integer replies (HSET's and
        EXPIRE's counts, which nobody reads: scanned for errors, never parsed one by one)."""
        with _as_redis_errors():
            rest = _skip_integers(self._conn._sock, integers, self._wait)
            replies = _read_replies(self._conn._sock, count, self._wait, rest)
        _raise_errors(replies)
        return replies

    def receive_one_field(self, count: int, integers: int = 0) -> list:
        """`receive` for replies of HMGET of one field: a fresh store's are all absent, and
        those are recognised from their bytes (RESP2) without parsing each."""
        sock = self._conn._sock
        absent = _ABSENT_FIELD * count
        with _as_redis_errors():
            data = _skip_integers(sock, integers, self._wait)
            while len(data) < len(absent) and absent.startswith(data):
                data += _recv(sock, self._wait)
            if data == absent:
                return [[None]] * count
            replies = _read_replies(sock, count, self._wait, data)
        _raise_errors(replies)
        return replies

    def _release(self, failed: bool) -> None:
        if self._conn is not None:
            if failed:
                self._conn.disconnect()
            self._pool.release(self._conn)
            self._conn = None


@contextlib.contextmanager
def _as_redis_errors():
    """Socket failures as the redis-py errors callers (and the circuit breaker) know."""
    try:
        yield
    except TimeoutError as e:
        raise redis.TimeoutError("Timeout reading from Redis") from e
    except ConnectionError as e:
        raise redis.ConnectionError(f"Redis connection lost: {e}") from e


# Each read lands in its thread's buffer of this size and is copied out at once: sock.recv(n)
# allocates n bytes on every read, which at this size is an mmap, an mremap and a munmap (the
# last one stopping the process's other threads' cores to flush their TLBs): some 30 us a
# read here, against 5 for the read itself.
_RECV_BYTES = 1 << 20
_buffers = threading.local()


def _received(sock, wait: Callable[[socket.socket], None] | None) -> memoryview:
    """The next bytes from `sock`, after `wait` (a Waiting's wait_readable; None: block), as
    a view of this thread's receive buffer: valid until this thread's next read, so the caller
    copies it before anything can switch to another call (a green pool's calls share the
    thread, and switch only where they wait)."""
    if wait is not None:
        wait(sock)
    buffer = getattr(_buffers, "view", None)
    if buffer is None:
        buffer = _buffers.view = memoryview(bytearray(_RECV_BYTES))
    n = sock.recv_into(buffer)
    if not n:
        raise ConnectionError("Redis closed the connection")
    return buffer[:n]


def _recv(sock, wait: Callable[[socket.socket], None] | None) -> bytes:
    """The next bytes from `sock`, after `wait`, as bytes of their own."""
    return bytes(_received(sock, wait))


_ABSENT_FIELD = b"*1\r\n$-1\r\n"  # HMGET key field, RESP2, when the field is not there


def _raise_errors(replies: list) -> None:
    if hiredis.ReplyError in map(type, replies):  # the scan stays in C; errors are rare
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise redis.ResponseError(str(reply))


def _skip_integers(sock, count: int, wait) -> bytes:
    """Consume `count` one-line replies; return the bytes read past them. An error reply
    among them raises redis.ResponseError (integer replies never hold a '-')."""
    carry = b""
    while count:
        data = carry + _recv(sock, wait)
        lines = data.count(b"\r\n")
        if lines >= count:  # the last of them ends in this read: split there, C-fast
            *done, rest = data.split(b"\r\n", count)
            _raise_line_errors(b"\r\n".join(done))
            return rest
        end = data.rfind(b"\r\n") + 2 if lines else 0  # keep an unfinished line for later
        _raise_line_errors(data[:end])
        carry, count = data[end:], count - lines
    return carry


def _raise_line_errors(lines: bytes) -> None:
    at = lines.find(b"-")
    if at != -1:
        message = lines[at + 1 :].split(b"\r\n", 1)[0].decode(errors="replace")
        raise redis.ResponseError(message)


def _read_raw(sock, count: int, wait, errors_ok: bool = False) -> list | bytearray:
    """The next `count` replies as received, found complete by the C scanner (each read is
    scanned from the start: a few ns a reply). Error replies raise redis.ResponseError
    (`errors_ok`: the replies come back parsed instead, errors among them, for a cluster's
    redirections to be followed)."""
    data = bytearray()
    while True:
        data += _received(sock, wait)
        end, errors = native.scan(data, 0, count)
        if end >= 0:
            break
        if end == -2:  # RESP the scanner does not know: hiredis reads it and the rest
            return _read_replies(sock, count, wait, bytes(data))
    if end != len(data):  # a pipeline's replies are all there is: never expected
        raise ConnectionError("Redis sent more than the replies to this round trip")
    if errors:
        replies = _read_replies(None, count, None, bytes(data))
        if errors_ok:
            return replies
        _raise_errors(replies)
    return data


def _read_replies(sock, count: int, wait, already: bytes = b"") -> list:
    """The next `count` replies. The reader is first fed an array header of `count`, so it
    returns them all as one list from a single call: hiredis walks the replies in C, where
    a `gets()` per reply cost about 0.5 us of Python each (a tenth of a 100-entity read)."""
    if not count:
        return []
    reader = hiredis.Reader()
    reader.feed(b"*%d\r\n" % count)
    if already:
        reader.feed(already)
    while (replies := reader.gets()) is False:
        reader.feed(_received(sock, wait))  # hiredis copies what it is fed
    return replies


def parse(data: bytes | bytearray, start: int, end: int, count: int) -> list:
    """The `count` whole replies in data[start:end] (bytes `round_trip` returned raw), parsed
    as `round_trip` would have parsed them."""
    if not count:
        return []
    reader = hiredis.Reader()
    reader.feed(b"*%d\r\n" % count)
    reader.feed(data, start, end - start)
    replies = reader.gets()
    if replies is False:
        raise ValueError(f"bytes {start}-{end} do not hold {count} whole replies")
    return replies
