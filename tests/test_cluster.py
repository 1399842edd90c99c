"""Reads and writes on a real 3-master Redis Cluster (Valkey, formed by augur's LocalCluster):
the same rows as Feast's get_online_features, every node asked at once, MOVED and ASK
followed, and bad cluster settings refused naming the option."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import redis
from redis.crc import key_slot

from augur.client.client import PredictorClient
from augur.features.cluster import ClusterStore, NodesDown, accepting_partial
from augur.features.connection import check_topology, connect, unreachable
from augur.features.native import native
from augur.features.reader import OnlineReader
from augur.features.redis_server import free_port
from augur.features.repo import build_plan
from augur.features.slots import SLOTS, SlotMap, merge, partition, partition_py
from tests.conftest import server_config
from tests.test_differential import _feast_matrix

READ_PATHS = {"c": {}, "numpy": {"use_native": False}, "fields": {"vectors": False}}


@pytest.fixture(scope="module")
def plan(cluster_repo):
    return build_plan(cluster_repo.store, "fraud_lgbm")


def _entities(repo, n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    pairs = pd.read_parquet(repo.data / "user_merchant_stats.parquet")
    known = pairs.sample(min(n, len(pairs)) // 2, random_state=seed)
    rest = n - len(known)
    users = np.concatenate([known["user_id"], rng.integers(0, 450, rest)]).astype(np.int64)
    merchants = np.concatenate([known["merchant_id"], rng.integers(0, 90, rest)]).astype(np.int64)
    users[::13] = users[0]  # repeated entities within one request
    return users, merchants


@pytest.mark.parametrize("path", sorted(READ_PATHS))
def test_reads_on_a_cluster_equal_feasts_get_online_features(cluster_repo, plan, path):
    reader = OnlineReader(connect(cluster_repo.address), **READ_PATHS[path])
    users, merchants = _entities(cluster_repo, 120)
    expected = _feast_matrix(cluster_repo.store, plan, users, merchants)
    assert not np.isnan(expected).all()
    defaults = np.array([c.default for c in plan.columns], np.float32)
    expected = np.where(np.isnan(expected), defaults, expected)  # as tests/test_differential
    for n in (1, 3, 120):  # one entity (a template), a few (read_few), many (columnar)
        got = reader.read(plan, {"user_id": users[:n], "merchant_id": merchants[:n]})
        np.testing.assert_array_equal(got.values, expected[:n])


def test_reads_of_1_100_1000_entities_ask_every_node_once(cluster_repo, redis_cluster, plan):
    store = connect(cluster_repo.address)
    reader = OnlineReader(store)
    reference = OnlineReader(connect(cluster_repo.address), use_native=False)
    masters = [redis.Redis(n.host, n.port) for n in redis_cluster.masters]
    for n in (1, 100, 1000):
        users, merchants = _entities(cluster_repo, n, seed=n)
        entities = {"user_id": users, "merchant_id": merchants}
        before = [_hmgets(m) for m in masters]
        got = reader.read(plan, entities)
        after = [_hmgets(m) for m in masters]
        np.testing.assert_array_equal(got.values, reference.read(plan, entities).values)
        assert sum(after) - sum(before) == got.distinct_keys  # each key asked once
        asked = sum(a > b for a, b in zip(after, before, strict=True))
        assert asked == (
            3 if n > 1 else len({_owner(store, plan, g, entities) for g in plan.groups})
        )
    assert store.refreshes == 1  # one slot map learnt, no redirection


def _hmgets(node: redis.Redis) -> int:
    return node.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0)


def _owner(store: ClusterStore, plan, group, entities) -> tuple:
    from augur.features.entities import GroupKeys

    return _slot_and_owner(store, GroupKeys(plan, group).few(entities, 1)[0][0])[1]


def _slot_and_owner(store: ClusterStore, key: bytes):
    from redis.crc import key_slot

    slot = key_slot(key)
    return slot, store.slots.nodes[store.slots.owner_of[slot]]


def _node_id(host, port) -> str:
    return redis.Redis(host, port).execute_command("CLUSTER", "MYID").decode()


def _move_slot(slot, source, target, finish: bool):
    """CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE of the slot's keys, then (finish) SETSLOT
    NODE everywhere: a resharding of one slot as redis-cli would do it."""
    src, dst = redis.Redis(*source), redis.Redis(*target)
    src_id, dst_id = _node_id(*source), _node_id(*target)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", target[0], target[1], "", 0, 5000, "KEYS", *keys)
    if finish:
        for node in (dst, src):
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def test_moved_relearns_the_slot_map_and_ask_is_followed(cluster_repo, plan):
    from augur.features.entities import GroupKeys

    store = connect(cluster_repo.address)
    reader = OnlineReader(store)
    users, merchants = _entities(cluster_repo, 40, seed=9)
    entities = {"user_id": users[:1], "merchant_id": merchants[:1]}
    expected = reader.read(plan, entities).values
    key = GroupKeys(plan, plan.groups[0]).few(entities, 1)[0][0]
    slot, owner = _slot_and_owner(store, key)
    other = next(n for n in store.slots.nodes if n != owner)

    _move_slot(slot, owner, other, finish=False)  # mid-migration: the old owner says ASK
    np.testing.assert_array_equal(reader.read(plan, entities).values, expected)
    assert store.refreshes == 1
    for node in (other, owner):  # finished: the old owner now says MOVED
        redis.Redis(*node).execute_command("CLUSTER", "SETSLOT", slot, "NODE", _node_id(*other))
    np.testing.assert_array_equal(reader.read(plan, entities).values, expected)
    assert store.refreshes == 2
    assert _slot_and_owner(store, key)[1] == other


def test_a_seed_list_where_no_node_answers_is_unavailable_naming_the_seeds(plan):
    seeds = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    reader = OnlineReader(connect(seeds))
    with pytest.raises(redis.ConnectionError) as e:
        reader.read(plan, {"user_id": [1], "merchant_id": [2]})
    assert seeds in str(e.value)
    assert seeds in unreachable(seeds)


def test_a_slot_without_an_owner_gives_missing_rows_or_unavailable_never_a_hang(cluster_repo, plan):
    store = connect(cluster_repo.address)
    reader = OnlineReader(store)
    users, merchants = _entities(cluster_repo, 60, seed=4)
    entities = {"user_id": users, "merchant_id": merchants}
    full = reader.read(plan, entities)
    owner = bytearray(store.slots.owner_of)
    owner[: 16384 // 3] = bytes([len(store.slots.nodes)]) * (16384 // 3)  # first master's gone
    store._slots = store._reads = type(store.slots)(store.slots.nodes, bytes(owner))
    with pytest.raises(NodesDown, match="without an owner"):
        reader.read(plan, entities, timeout_s=1.0)
    with accepting_partial() as lost:
        partial = reader.read(plan, entities, timeout_s=1.0)
    assert 0 < lost.keys < full.distinct_keys
    assert (partial.missing >= full.missing).all() and (partial.missing > full.missing).any()
    kept = partial.missing == full.missing
    np.testing.assert_array_equal(partial.values[kept], full.values[kept])


def test_cluster_and_one_node_settings_that_disagree_are_refused_naming_the_option(tmp_path):
    yaml = tmp_path / "feature_store.yaml"
    yaml.write_text("online_store:\n  type: redis\n  redis_type: redis_cluster\n")
    with pytest.raises(ValueError, match=r"redis\.cluster: true"):
        check_topology("127.0.0.1:7000", False, yaml)
    check_topology("127.0.0.1:7000,127.0.0.1:7001", False, yaml)
    check_topology("127.0.0.1:7000", True, yaml)
    yaml.write_text("online_store:\n  type: redis\n")
    with pytest.raises(ValueError, match=r"redis\.cluster says Redis Cluster"):
        check_topology("127.0.0.1:7000", True, yaml)
    with pytest.raises(ValueError, match="several nodes"):
        check_topology("127.0.0.1:7000,127.0.0.1:7001", False, yaml)
    yaml.write_text("online_store:\n  type: redis\n  redis_type: redis_sentinel\n")
    with pytest.raises(ValueError, match="redis_sentinel is not supported"):
        check_topology("127.0.0.1:7000", False, yaml)
    with pytest.raises(ValueError, match="not a URL"):
        connect("redis://127.0.0.1:7000", cluster=True)
    with pytest.raises(ValueError, match=r"redis\.read_from_replicas needs a Redis Cluster"):
        connect("127.0.0.1:7000", read_from_replicas=True)
    yaml.write_text("online_store:\n  type: redis\n")
    with pytest.raises(ValueError, match=r"redis\.read_from_replicas needs a Redis Cluster"):
        check_topology("127.0.0.1:7000", False, yaml, read_from_replicas=True)


def test_reads_from_replicas_give_the_same_rows_and_leave_the_masters_alone(
    cluster_repo, redis_cluster, plan
):
    _replicas_caught_up(redis_cluster)
    _slot_maps_agree(redis_cluster)  # earlier tests of this module move slots between masters
    store = connect(cluster_repo.address, read_from_replicas=True)
    reader = OnlineReader(store)
    on_masters = OnlineReader(connect(cluster_repo.address))
    masters = [redis.Redis(n.host, n.port) for n in redis_cluster.masters]
    replicas = [redis.Redis(n.host, n.port) for n in redis_cluster.replicas]
    users, merchants = _entities(cluster_repo, 300, seed=21)
    expected = _feast_matrix(cluster_repo.store, plan, users, merchants)
    defaults = np.array([c.default for c in plan.columns], np.float32)
    expected = np.where(np.isnan(expected), defaults, expected)
    for n in (1, 300):
        entities = {"user_id": users[:n], "merchant_id": merchants[:n]}
        before = [_hmgets(m) for m in masters], [_hmgets(r) for r in replicas]
        got = reader.read(plan, entities)
        after = [_hmgets(m) for m in masters], [_hmgets(r) for r in replicas]
        np.testing.assert_array_equal(got.values, expected[:n])
        np.testing.assert_array_equal(got.values, on_masters.read(plan, entities).values)
        assert after[0] == before[0], "a master was read"
        assert sum(after[1]) - sum(before[1]) == got.distinct_keys  # each key on a replica
    assert set(store.read_slots.nodes) <= {(n.host, n.port) for n in redis_cluster.replicas}
    assert store.slots.nodes != store.read_slots.nodes  # writes still go to the masters


def _slot_maps_agree(cluster, timeout_s: float = 10.0) -> None:
    """Until every node (masters and replicas) gives the same slot map, lists a replica for
    every range, and no slot is still migrating: a replica whose map is behind redirects a
    read to a master, and a range listed without its replica (one a loaded box let miss its
    node timeout, marked failed until it answers again) is read on its master."""
    deadline = time.monotonic() + timeout_s
    nodes = [redis.Redis(n.host, n.port) for n in (*cluster.masters, *cluster.replicas)]
    while True:
        maps = {
            tuple(
                sorted(
                    (r[0], r[1], r[2][1], len(r) > 3) for r in n.execute_command("CLUSTER", "SLOTS")
                )
            )
            for n in nodes
        }
        unlisted = any(not listed for view in maps for *_, listed in view)
        moving = any(
            "->-" in line or "-<-" in line
            for n in cluster.masters
            for line in redis.Redis(n.host, n.port)
            .execute_command("CLUSTER", "NODES")
            .decode()
            .splitlines()
            if "myself" in line
        )
        if len(maps) == 1 and not moving and not unlisted:
            return
        assert time.monotonic() < deadline, (
            f"slot maps still differ or lack replicas: {len(maps)} views, {maps}"
        )
        time.sleep(0.05)


def _replicas_caught_up(cluster, timeout_s: float = 10.0) -> None:
    """Until every replica has applied its master's whole replication stream (the offsets
    an operator compares to see the lag: INFO replication on the master)."""
    deadline = time.monotonic() + timeout_s
    for master in cluster.masters:
        info = redis.Redis(master.host, master.port).info("replication")
        while any(
            v["offset"] < info["master_repl_offset"]
            for k, v in info.items()
            if k.startswith("slave") and isinstance(v, dict)
        ):
            assert time.monotonic() < deadline, f"replicas of {master.address} lag: {info}"
            time.sleep(0.05)
            info = redis.Redis(master.host, master.port).info("replication")


@pytest.mark.skipif(native is None, reason="the C extension is not built")
def test_c_partition_and_merge_agree_with_the_python_reference_and_redis_py_slots():
    """Random keys (some with hash tags, some empty), commands of several shapes in a row (the
    C skips a repeated tail of fields by comparing bytes), replies merged back in order."""
    rng = np.random.default_rng(5)
    shapes = [[b"HMGET", b"f1", b"f2", b"f3"], [b"HGETALL"], [b"HMGET", b"f1"], [b"GET"]]
    keys, commands = [], []
    for i in range(3000):
        key = rng.integers(0, 256, rng.integers(0, 40), dtype=np.uint8).tobytes()
        if i % 7 == 0:
            key = b"a{%d}b" % (i % 5)
        shape = shapes[(i // 50) % len(shapes)]  # runs of one shape, then another
        args = [shape[0], key, *shape[1:]]
        keys.append(key)
        commands.append(
            b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        )
    payload = b"".join(commands)
    owner = np.array([s * 3 // SLOTS for s in range(SLOTS)], np.uint8)
    owner[100:200] = 3  # slots without an owner
    slots = SlotMap((("a", 1), ("b", 2), ("c", 3)), owner.tobytes())
    parts, owners = partition(payload, len(commands), slots)
    reference = np.empty(len(commands), np.uint8)
    assert parts == partition_py(payload, len(commands), slots, reference)
    np.testing.assert_array_equal(owners, reference)
    np.testing.assert_array_equal(owners, owner[[key_slot(k) for k in keys]])
    echoes = [b"$%d\r\n%s\r\n" % (len(k), k) for k in keys]  # each command's reply: its key
    replies = [b"".join(e for e, o in zip(echoes, owners, strict=True) if o == n) for n in range(4)]
    assert bytes(merge(replies, owners, len(commands))) == b"".join(echoes)
    with pytest.raises(ValueError):
        partition(payload[:-3], len(commands), slots)


def test_predict_on_a_cluster_reading_replicas_scores_as_on_one_node(
    cluster_repo, redis_cluster, model_repo, client, servers
):
    """A server whose config says read_from_replicas, on the cluster holding the same rows as
    the session's one-node server: the same scores and feature status, read from replicas."""
    _replicas_caught_up(redis_cluster)
    _slot_maps_agree(redis_cluster)
    config = server_config(cluster_repo, model_repo)
    config.redis.read_from_replicas = True
    running = servers.start(config)
    users, merchants = _entities(cluster_repo, 100, seed=31)
    entities = {"user_id": users.tolist(), "merchant_id": merchants.tolist()}
    amounts = {"amount": [float(i) for i in range(100)]}
    replicas = [redis.Redis(n.host, n.port) for n in redis_cluster.replicas]
    before = sum(_hmgets(r) for r in replicas)
    with PredictorClient(f"127.0.0.1:{running.port}", timeout=10) as own:
        got = own.predict("fraud_lgbm", entities, amounts)
    expected = client.predict("fraud_lgbm", entities, amounts)
    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(got.missing, expected.missing)
    assert got.missing.sum() < got.present.sum()  # most rows found: not all defaults
    assert sum(_hmgets(r) for r in replicas) > before
