"""A Redis Cluster's slot map: which master (or, for replica reads, which replica) serves each
of the 16384 hash slots, learnt with CLUSTER SLOTS, and commands split by it (in C where
augur.features._native is built, else the Python reference here). Not the sending:
augur.features.cluster does that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import hiredis
import numpy as np
import redis
from redis.crc import key_slot

from augur.features.native import native

SLOTS = 16384


@dataclass(frozen=True)
class SlotMap:
    """Nodes in a fixed order (masters; replicas in a map for replica reads) and, per slot,
    the index of the node serving it; a slot without one points at len(nodes), a node that is
    never reachable."""

    nodes: tuple[tuple[str, int], ...]
    owner_of: bytes  # SLOTS bytes
    # Ranges read on their master for want of a replica (asked for replicas, none listed).
    on_masters: int = 0

    @classmethod
    def from_slots_reply(
        cls, reply: list, replicas: bool = False, avoid: frozenset = frozenset()
    ) -> SlotMap:
        """The owners of CLUSTER SLOTS' ranges: each range's master, or with `replicas` one
        of its replicas, not one of `avoid` (that just failed: the cluster may not have
        marked it yet); the master where there is none."""
        nodes: list[tuple[str, int]] = []
        owner = np.full(SLOTS, 255, np.uint8)
        on_masters = 0
        for entry in reply:
            lo, hi = entry[0], entry[1]
            # Processes spread over a range's replicas (a fixed pick per process).
            choices = [r for r in entry[3:] if _node(r) not in avoid] if replicas else []
            on_masters += replicas and not choices
            choices = choices or entry[2:3]
            node = _node(choices[os.getpid() % len(choices)])
            if node not in nodes:
                nodes.append(node)
            owner[int(lo) : int(hi) + 1] = nodes.index(node)
        if len(nodes) > 254:
            raise ValueError(f"a cluster of {len(nodes)} nodes to read: Augur reads up to 254")
        owner[owner == 255] = len(nodes)
        return cls(tuple(nodes), owner.tobytes(), on_masters)

    def node_of(self, key: bytes) -> int:
        return self.owner_of[key_slot(key)]


def _node(entry: list) -> tuple[str, int]:
    host = entry[0].decode() if isinstance(entry[0], bytes) else entry[0]
    return host, int(entry[1])


def discover(clients: list[redis.Redis]) -> list:
    """CLUSTER SLOTS from the first of `clients` that answers it (SlotMap.from_slots_reply
    makes the map)."""
    errors = []
    for client in clients:
        try:
            return client.execute_command("CLUSTER", "SLOTS")
        except redis.ResponseError as e:
            raise ValueError(
                f"Redis at {_where(client)} is not a cluster node ({e}); drop redis.cluster, "
                "or list a cluster's nodes in redis.address"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as e:
            errors.append(f"{_where(client)}: {e}")
    raise redis.ConnectionError(f"no cluster seed answers ({'; '.join(errors)})")


def _where(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


def partition(payload: bytes, count: int, slots: SlotMap) -> tuple[list[bytes], np.ndarray]:
    """The `count` commands of `payload` split by the node owning each one's key: each
    node's commands in their order, and per command its node's index."""
    owners = np.empty(count, np.uint8)
    if native is not None:
        parts = native.partition(payload, count, slots.owner_of, len(slots.nodes) + 1, owners)
        return parts, owners
    return partition_py(payload, count, slots, owners), owners


def partition_py(payload: bytes, count: int, slots: SlotMap, owners: np.ndarray) -> list[bytes]:
    """`partition` in Python: the reference the C is held to, and the path without it."""
    parts: list[list[bytes]] = [[] for _ in range(len(slots.nodes) + 1)]
    for i, (command, args) in enumerate(split_commands(payload, count)):
        owners[i] = slots.node_of(args[1])
        parts[owners[i]].append(command)
    return [b"".join(p) for p in parts]


def split_commands(payload: bytes, count: int) -> list[tuple[bytes, list[bytes]]]:
    """Each command of `payload` as its bytes and its arguments (a RESP array of bulk strings
    parses as one)."""
    reader = hiredis.Reader()
    reader.feed(payload)
    out = []
    at = 0
    for _ in range(count):
        args = reader.gets()
        if args is False or not isinstance(args, list) or len(args) < 2:
            raise ValueError("a cluster command needs a key: an array of two bulk strings or more")
        size = _command_size(payload, at, len(args))
        out.append((payload[at : at + size], args))
        at += size
    return out


def _command_size(payload: bytes, at: int, argc: int) -> int:
    p = payload.index(b"\r\n", at) + 2
    for _ in range(argc):
        e = payload.index(b"\r\n", p)
        p = e + 2 + int(payload[p + 1 : e]) + 2
    return p - at


def merge(parts: list, owners: np.ndarray, count: int) -> list | bytearray:
    """Each node's replies (bytes received, or parsed lists) put back in command order."""
    if all(isinstance(p, (bytes, bytearray)) for p in parts) and native is not None:
        return native.merge(parts, owners.tobytes(), count)
    iters = [iter(_parsed(p, int((owners == k).sum()))) for k, p in enumerate(parts)]
    return [next(iters[k]) for k in owners.tolist()]


def _parsed(part, count: int) -> list:
    if isinstance(part, list):
        return part
    if not count:
        return []
    reader = hiredis.Reader()
    reader.feed(b"*%d\r\n" % count)
    reader.feed(bytes(part))
    return reader.gets()
