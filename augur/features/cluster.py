"""The online store as a Redis Cluster: one pipelined round trip per node, all nodes in flight
at once, replies put back in request order, MOVED and ASK followed, a node down failing only
its own keys (behind its own circuit breaker). Not the slot map (augur.features.slots) nor the
writes (augur.features.cluster_write).

A read's commands arrive as one payload, as on one node: split by slot owner in C, sent to
every node before any reply is read, and the replies merged back into the bytes one node would
have sent, so the C decoding downstream is the same.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import hiredis
import numpy as np
import redis

from augur.features.breaker import CircuitBreaker
from augur.features.resp import OwnConnections, _read_raw, _read_replies
from augur.features.slots import SlotMap, discover, merge, partition, split_commands
from augur.features.waiting import BLOCKING, Waiting

# After a node fails, how often the slot map is asked for again until a replica takes over.
REFRESH_AFTER_FAILURE_S = 0.1
# While a range is read on its master for want of a replica (the cluster lists none: failed,
# or still syncing), how often the map is asked for again, so that reads return to the
# replica once it is back rather than loading the master until the next MOVED.
READ_MAP_RETRY_S = 5.0
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)


class NodesDown(redis.ConnectionError):
    """Some of a read's keys live on cluster nodes that failed (each node's own breaker has
    counted it): the store as a whole is not down."""


@dataclass
class PartialRead:
    """What a read that accepts partial results lost: keys whose node failed, and where."""

    keys: int = 0
    nodes: set[str] = field(default_factory=set)


_partial: contextvars.ContextVar[PartialRead | None] = contextvars.ContextVar(
    "augur_partial_read", default=None
)


@contextlib.contextmanager
def accepting_partial() -> Iterator[PartialRead]:
    """Reads inside this block (this thread or greenlet) answer the keys of a failed node as
    absent, recorded in the PartialRead yielded, instead of raising NodesDown."""
    lost = PartialRead()
    token = _partial.set(lost)
    try:
        yield lost
    finally:
        _partial.reset(token)


class _Node:
    def __init__(self, client: redis.Redis, breaker: CircuitBreaker, address: str):
        self.client = client
        self.own = OwnConnections(client)
        self.breaker = breaker
        self.address = address


class ClusterStore:
    """A cluster's masters, reached from `seeds`; `options` are each node's connection
    options (credentials, TLS, timeouts), as redis.Redis takes them. With
    `read_from_replicas`, reads go to a replica of each slot's master (READONLY on every
    connection; docs/cluster.md says how stale they may be); writes always to masters."""

    def __init__(
        self,
        seeds: list[tuple[str, int]],
        options: dict,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 1.0,
        read_from_replicas: bool = False,
    ):
        self.seeds = seeds
        self.read_from_replicas = read_from_replicas
        self._options = options
        if read_from_replicas:
            self._options = {**options, "redis_connect_func": _read_only(options)}
        self._breaker = (breaker_failures, breaker_cooldown_s)
        self._nodes: dict[tuple[str, int], _Node] = {}
        self._lock = threading.Lock()
        self._slots: SlotMap | None = None
        self._reads: SlotMap | None = None
        self.refreshes = 0  # slot maps learnt since start (the first, then one per MOVED)
        self._refreshed_at = 0.0

    @property
    def seed_list(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.seeds)

    def node(self, address: tuple[str, int]) -> _Node:
        node = self._nodes.get(address)
        if node is None:
            with self._lock:
                node = self._nodes.get(address)
                if node is None:
                    host, port = address
                    client = redis.Redis(host=host, port=port, **self._options)
                    node = _Node(client, CircuitBreaker(*self._breaker), f"{host}:{port}")
                    self._nodes[address] = node
        return node

    @property
    def slots(self) -> SlotMap:
        """Each slot's master: where writes go."""
        return self._slots or self.refresh()

    @property
    def read_slots(self) -> SlotMap:
        """Where each slot is read: its master, or a replica of it (read_from_replicas)."""
        reads = self._reads
        if reads is None:
            self.refresh()
        elif reads.on_masters and time.monotonic() - self._refreshed_at >= READ_MAP_RETRY_S:
            with contextlib.suppress(*_UNAVAILABLE, ValueError):
                self.refresh()
        return self._reads

    def refresh(self, failed: frozenset[tuple[str, int]] = frozenset()) -> SlotMap:
        """Learn the slot map again, asking the masters known, then the seeds; nodes that
        just `failed` last."""
        self._refreshed_at = time.monotonic()
        known = list(self._slots.nodes) if self._slots else []
        asked = known + [s for s in self.seeds if s not in known]
        asked = [a for a in asked if a not in failed] + [a for a in asked if a in failed]
        try:
            reply = discover([self.node(a).client for a in asked])
        except redis.ConnectionError as e:
            raise redis.ConnectionError(f"Redis Cluster at {self.seed_list}: {e}") from None
        slots = SlotMap.from_slots_reply(reply)
        reads = slots
        if self.read_from_replicas:
            reads = SlotMap.from_slots_reply(reply, True, failed)
        self._slots, self._reads = slots, reads
        self.refreshes += 1
        return slots

    def relearn_after_failure(self, failed: frozenset[tuple[str, int]]) -> None:
        """A node failed: its replica may have taken over, so learn the map again (at most
        every REFRESH_AFTER_FAILURE_S, from the nodes still answering)."""
        if time.monotonic() - self._refreshed_at >= REFRESH_AFTER_FAILURE_S:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, ValueError):
                self.refresh(failed)

    def breaker_states(self) -> dict[str, str]:
        return {n.address: n.breaker.state for n in self._nodes.values()}

    def ping(self) -> bool:
        self.refresh()
        return True

    def close(self) -> None:
        for node in self._nodes.values():
            node.client.close()

    def trips(self, waiting: Waiting = BLOCKING) -> ClusterTrips:
        return ClusterTrips(self, waiting)

    def write(self, writer, view, table, timestamp_column, progress):
        from augur.features.cluster_write import write

        return write(self, writer, view, table, timestamp_column, progress)


class ClusterTrips:
    """A reader's round trips to a cluster, waiting as its Waiting says."""

    def __init__(self, store: ClusterStore, waiting: Waiting):
        self._store = store
        self._waiting = waiting
        self._wait = None if waiting is BLOCKING else waiting.wait_readable

    def trip(
        self, payload: bytes, count: int, timeout_s: float | None, raw: bool = False
    ) -> list | bytearray:
        """resp.round_trip's contract on a cluster: every node's part sent, then every
        node's replies read (so the nodes work at once), put back in command order."""
        store = self._store
        slots = store.read_slots
        parts, owners = partition(payload, count, slots)
        counts = np.bincount(owners, minlength=len(parts)).tolist()
        failed: dict[int, str] = {}
        sent: dict[int, tuple[_Node, object]] = {}
        for k, part in enumerate(parts):
            if not counts[k]:
                continue
            if k == len(slots.nodes):
                failed[k] = "slot without an owner (CLUSTERDOWN)"
                continue
            node = store.node(slots.nodes[k])
            try:
                sent[k] = (node, self._send(node, part, timeout_s))
            except _UNAVAILABLE as e:
                failed[k] = f"{node.address}: {e}"
        replies: list = list(parts)
        for k, (node, conn) in sent.items():
            try:
                sock = conn._sock
                if raw:
                    replies[k] = _read_raw(sock, counts[k], self._wait, errors_ok=True)
                else:
                    replies[k] = _read_replies(sock, counts[k], self._wait)
                if conn.socket_timeout is not None:
                    sock.settimeout(conn.socket_timeout)
                node.breaker.succeeded()
            except BaseException as e:
                conn.disconnect()
                if not isinstance(e, _UNAVAILABLE):
                    node.breaker.abandoned()
                    raise
                node.breaker.failed()
                failed[k] = f"{node.address}: {e or type(e).__name__}"
            finally:
                node.own.put(conn)
        fixed = self._follow(parts, counts, replies, failed, timeout_s)
        for k in failed:
            replies[k] = _absent(parts[k], counts[k], raw and not fixed)
        if failed:
            known = len(slots.nodes)
            store.relearn_after_failure(frozenset(slots.nodes[k] for k in failed if k < known))
            self._lose(failed, counts)
        if fixed or not raw:
            replies = [
                r if isinstance(r, list) else _parse(r, counts[k]) for k, r in enumerate(replies)
            ]
        return merge(replies, owners, count)

    def _send(self, node: _Node, part: bytes, timeout_s: float | None):
        """`part` written to `node` on a connection of this thread's, returned for its
        replies; a connection found dead (the node restarted) is replaced once."""
        node.breaker.before_call()
        for attempt in (0, 1):
            conn = node.own.get()
            try:
                if conn._sock is None:
                    self._waiting.run_elsewhere(conn.connect)
                if timeout_s is not None and timeout_s < (conn.socket_timeout or math.inf):
                    conn._sock.settimeout(max(timeout_s, 0.001))
                conn.send_packed_command([part], check_health=False)
                return conn
            except _UNAVAILABLE:
                conn.disconnect()
                node.own.put(conn)
                if attempt:
                    node.breaker.failed()
                    raise
            except BaseException:
                conn.disconnect()
                node.own.put(conn)
                node.breaker.abandoned()
                raise
        raise AssertionError("unreachable")

    def _follow(self, parts, counts, replies, failed, timeout_s) -> bool:
        """MOVED and ASK replies followed once (MOVED also relearns the slot map); any
        other error reply fails its node's part. Whether any reply was replaced."""
        redirected: dict[tuple[str, int], list] = {}
        moved = False
        for k, got in enumerate(replies):
            if not isinstance(got, list) or k in failed:
                continue
            commands = None
            for j, reply in enumerate(got):
                if not isinstance(reply, hiredis.ReplyError):
                    continue
                kind, _, rest = str(reply).partition(" ")
                if kind not in ("MOVED", "ASK"):
                    failed[k] = f"{str(reply)[:120]}"
                    break
                commands = commands or split_commands(parts[k], counts[k])
                host, _, port = rest.split(" ")[-1].rpartition(":")
                target = (host or self._store.slots.nodes[0][0], int(port))
                redirected.setdefault(target, []).append((k, j, commands[j][0], kind == "ASK"))
                moved |= kind == "MOVED"
        if moved:
            with contextlib.suppress(redis.ConnectionError):
                self._store.refresh()
        for target, items in redirected.items():
            node = self._store.node(target)
            payload = b"".join(
                (b"*1\r\n$6\r\nASKING\r\n" if ask else b"") + command
                for _, _, command, ask in items
            )
            expect = len(items) + sum(ask for *_, ask in items)
            try:
                conn = self._send(node, payload, timeout_s)
                try:
                    got = _read_replies(conn._sock, expect, self._wait)
                    node.breaker.succeeded()
                except _UNAVAILABLE:
                    conn.disconnect()
                    node.breaker.failed()
                    raise
                finally:
                    node.own.put(conn)
            except _UNAVAILABLE as e:
                for k, *_ in items:
                    failed[k] = f"{node.address}: {e}"
                continue
            at = 0
            for k, j, _, ask in items:
                at += ask  # ASKING's +OK
                if isinstance(got[at], hiredis.ReplyError):
                    failed[k] = f"{node.address}: {got[at]}"
                replies[k][j] = got[at]
                at += 1
        return bool(redirected)

    def _lose(self, failed: dict[int, str], counts: list[int]) -> None:
        lost = _partial.get()
        why = "; ".join(failed.values())
        if lost is None:
            raise NodesDown(f"Redis Cluster at {self._store.seed_list}: {why}")
        lost.keys += sum(counts[k] for k in failed)
        lost.nodes.update(failed.values())


def _read_only(options: dict):
    """A connect hook: the usual handshake, then READONLY, so that a replica answers reads
    of its master's slots instead of redirecting them (a master ignores it)."""
    log_in = options.get("redis_connect_func")

    def connect(connection) -> None:
        if log_in is None:
            connection.on_connect()
        else:
            log_in(connection)
        connection.send_command("READONLY")
        connection.read_response()

    return connect


def _absent(part: bytes, count: int, raw: bool) -> list | bytes:
    """The replies of a part whose node failed, as if its keys were absent."""
    out: list = []
    for _, args in split_commands(part, count):
        name = args[0].upper()
        if name == b"HGETALL":
            out.append(b"*0\r\n" if raw else [])
        elif name == b"HMGET":
            n = len(args) - 2
            out.append(b"*%d\r\n" % n + b"$-1\r\n" * n if raw else [None] * n)
        else:
            out.append(b"$-1\r\n" if raw else None)
    return b"".join(out) if raw else out


def _parse(data, count: int) -> list:
    if not count:
        return []
    reader = hiredis.Reader()
    reader.feed(b"*%d\r\n" % count)
    reader.feed(bytes(data))
    return reader.gets()
