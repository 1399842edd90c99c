"""One pipelined round trip to Redis: pre-serialized commands out, every reply back.

Both the read path and the writer build their RESP bytes themselves (the read path per key,
the writer for whole batches) and send them here. Replies are parsed by a hiredis reader
straight off the socket: redis-py's per-reply path costs several microseconds a reply,
which is most of a 100-entity read's client time. redis-py still owns the connection:
pooling, the login handshake, TLS and timeouts.
"""

from __future__ import annotations

import hiredis
import redis


def command_args(*args: bytes) -> bytes:
    """Arguments of a command in RESP, without the array header: bulk strings in a row."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


def round_trip(
    client: redis.Redis, payload: bytes, count: int, timeout_s: float | None = None
) -> list:
    """Send `payload` (`count` commands) on one pooled connection and read every reply.

    `timeout_s` bounds this round trip's socket waits (a caller's remaining deadline),
    never beyond the client's configured read timeout. A connection found dead (Redis
    restarted since it was pooled) is replaced once; any failure disconnects it, so a late
    reply can never be read by the next caller. Error replies raise redis.ResponseError."""
    pool = client.connection_pool
    for attempt in (0, 1):
        conn = pool.get_connection()
        try:
            conn.connect()
            if timeout_s is not None:
                limit = min(timeout_s, conn.socket_timeout or timeout_s)
                conn.update_current_socket_timeout(max(limit, 0.001))
            conn.send_packed_command([payload], check_health=False)
            replies = _read_replies(conn._sock, count)
            if timeout_s is not None:
                conn.update_current_socket_timeout(-1)  # back to the configured timeout
        except (redis.ConnectionError, ConnectionError) as e:
            conn.disconnect()
            if attempt:
                raise redis.ConnectionError(f"Redis connection lost: {e}") from e
            continue
        except TimeoutError as e:  # the socket's own timeout
            conn.disconnect()
            raise redis.TimeoutError("Timeout reading from Redis") from e
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise redis.ResponseError(str(reply))
        return replies
    raise AssertionError("unreachable")


def _read_replies(sock, count: int) -> list:
    reader = hiredis.Reader()
    out: list = []
    while len(out) < count:
        reply = reader.gets()
        if reply is False:
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("Redis closed the connection")
            reader.feed(data)
        else:
            out.append(reply)
    return out
