"""A Redis Cluster losing a master and being resharded while reads run: its replica takes
over (CLUSTER FAILOVER TAKEOVER), no call is lost (each answers, degraded, or is refused
within its deadline), and a slot range moved under load never gives a wrong row."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
import redis

from augur.features import cluster as cluster_module
from augur.features.cluster import NodesDown, accepting_partial
from augur.features.connection import RedisTimeouts, connect
from augur.features.reader import OnlineReader
from augur.features.repo import build_plan
from tests.test_cluster import _entities, _move_slot, _node_id

DEADLINE_S = 0.3
CALLS = 400  # bounded load: at most this many reads, or RUN_S, whichever ends first
RUN_S = 20.0


@pytest.fixture(scope="module")
def plan(cluster_repo):
    return build_plan(cluster_repo.store, "fraud_lgbm")


def _reader(repo):
    return OnlineReader(connect(repo.address, RedisTimeouts(0.2, 0.5), breaker=(3, 0.2)))


def test_resharding_a_slot_range_under_load_gives_no_wrong_row(cluster_repo, plan):
    reader = _reader(cluster_repo)
    users, merchants = _entities(cluster_repo, 200, seed=11)
    entities = {"user_id": users, "merchant_id": merchants}
    expected = reader.read(plan, entities).values
    store = reader._fetcher._client
    source, target = store.slots.nodes[0], store.slots.nodes[1]
    slots = range(0, 300)  # keys of the first master's lowest slots move to the second
    wrong = reads = 0
    for slot in slots:
        _move_slot(slot, source, target, finish=True)
        if slot % 10 == 0:
            got = reader.read(plan, entities, timeout_s=1.0).values
            reads += 1
            wrong += not np.array_equal(got, expected, equal_nan=True)
    got = reader.read(plan, entities, timeout_s=1.0).values
    print(f"resharding: {len(slots)} slots moved, {reads + 1} reads, {wrong} wrong")
    assert wrong == 0 and np.array_equal(got, expected, equal_nan=True)
    assert store.refreshes > 1  # MOVED taught the reader the new owners


def test_killing_a_master_loses_no_call_and_its_replica_takes_over(
    cluster_repo, redis_cluster, plan
):
    reader = _reader(cluster_repo)
    users, merchants = _entities(cluster_repo, 100, seed=12)
    entities = {"user_id": users, "merchant_id": merchants}
    expected = reader.read(plan, entities).values
    store = reader._fetcher._client
    victim = next(n for n in redis_cluster.masters if (n.host, n.port) == store.slots.nodes[2])
    victim_id = _node_id(victim.host, victim.port)
    replica = next(
        n
        for n in redis_cluster.replicas
        if victim_id in redis.Redis(n.host, n.port).execute_command("CLUSTER", "NODES").decode()
        and redis.Redis(n.host, n.port).info("replication").get("master_port") == victim.port
    )
    counts = {"ok": 0, "degraded": 0, "unavailable": 0, "wrong": 0, "late": 0}
    killed_at = recovered_at = None
    began = time.monotonic()
    for call in range(CALLS):
        if call == 20:
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait()
            killed_at = time.monotonic()
        if call == 40:  # the operator's (or the cluster's own) failover
            redis.Redis(replica.host, replica.port).execute_command(
                "CLUSTER", "FAILOVER", "TAKEOVER"
            )
        start = time.monotonic()
        try:
            with accepting_partial() as lost:
                got = reader.read(plan, entities, timeout_s=DEADLINE_S).values
            kind = "degraded" if lost.keys else "ok"
            if kind == "ok" and not np.array_equal(got, expected, equal_nan=True):
                kind = "wrong"
        except (NodesDown, redis.ConnectionError, redis.TimeoutError):
            kind = "unavailable"
        counts[kind] += 1
        counts["late"] += time.monotonic() - start > DEADLINE_S + 0.25
        if kind == "ok" and killed_at and recovered_at is None:
            recovered_at = time.monotonic()
        if (recovered_at and call >= 60) or time.monotonic() - began > RUN_S:
            break
        time.sleep(0.01)
    sent = sum(counts[k] for k in ("ok", "degraded", "unavailable", "wrong"))
    recovery_ms = (recovered_at - killed_at) * 1000 if recovered_at else None
    print(f"failover: sent {sent} {counts} lost 0 recovery {recovery_ms} ms")
    assert counts["wrong"] == 0 and counts["late"] == 0
    assert counts["degraded"] > 0  # the dead master's rows got defaults, the rest served
    assert recovered_at is not None, counts
    np.testing.assert_array_equal(reader.read(plan, entities).values, expected)


def test_a_range_read_on_its_master_for_want_of_a_replica_goes_back_to_it(
    cluster_repo, redis_cluster, plan, monkeypatch
):
    """A replica paused past the node timeout: the cluster marks it failed and lists its range
    without it, so a replica reader reads that range on the master; once it answers again and
    is listed, the reader's next map retry puts those reads back on the replica."""
    monkeypatch.setattr(cluster_module, "READ_MAP_RETRY_S", 0.2)
    running = [n for n in redis_cluster.nodes if n.process and n.process.poll() is None]
    seed = redis.Redis(running[0].host, running[0].port)  # a master may be dead: an earlier test
    entry = next(e for e in seed.execute_command("CLUSTER", "SLOTS") if len(e) > 3)
    master, replica_address = _node(entry[2]), _node(entry[3])
    replica = next(n for n in running if (n.host, n.port) == replica_address)
    others = [redis.Redis(n.host, n.port) for n in running if n is not replica]
    users, merchants = _entities(cluster_repo, 100, seed=14)
    entities = {"user_id": users, "merchant_id": merchants}
    expected = _reader(cluster_repo).read(plan, entities).values

    replica.process.send_signal(signal.SIGSTOP)
    try:
        _until(
            lambda: not any(_listed(c, replica_address) for c in others),
            "the paused replica marked failed",
        )
        store = connect(cluster_repo.address, read_from_replicas=True)
        reader = OnlineReader(store)
        np.testing.assert_array_equal(reader.read(plan, entities).values, expected)
        assert master in store.read_slots.nodes and store.read_slots.on_masters >= 1
    finally:
        replica.process.send_signal(signal.SIGCONT)
    _until(lambda: all(_listed(c, replica_address) for c in others), "the replica listed again")
    _until(
        lambda: reader.read(plan, entities) is not None and master not in store.read_slots.nodes,
        "reads back on the replica",
    )
    assert replica_address in store.read_slots.nodes  # (a range whose master was killed above
    # by the failover test has no replica left: on_masters may still count it)
    np.testing.assert_array_equal(reader.read(plan, entities).values, expected)


def _node(entry: list) -> tuple[str, int]:
    return entry[0].decode(), int(entry[1])


def _listed(client: redis.Redis, node: tuple[str, int]) -> bool:
    return any(node in map(_node, e[3:]) for e in client.execute_command("CLUSTER", "SLOTS"))


def _until(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)
