"""Killing `augur materialize` at a random point and running it again yields exactly the same
Redis contents as one clean run; and what the killed run leaves is whole per entity and view.

Two copies of the example repo with the same seed and the same data, each with its own Redis.
The first is materialized once. The second is SIGKILLed part way, checked, then materialized
again to completion, and its whole Redis compared with the first's, byte for byte. Every run
names the same `--start` and `--end`, so each writes the same window whatever ran before.

Where to kill: a run spends seconds importing and querying and a fraction of a second
writing, so a kill at a random time would nearly always land before the first write. The
seed picks a key count instead, and the run is killed as soon as Redis holds that many keys:
during the writes. Augur's writer sends a view as pipelines of one HSET per entity (10,000
a pipeline), and Redis still runs what a killed client had already sent, so the cut lies
somewhere past that count: between views or inside one (the usual case here), or after
the last write.

On a Redis Cluster (3 masters + 3 replicas, the module's one `redis_cluster`), the same two
promises, compared over every master's keys against the one-node clean run: a killed run
rerun, and a run during which a master is killed (kill -9) and its replica promoted (CLUSTER
FAILOVER TAKEOVER), which the writer retries on the new master.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import redis
import yaml

import examples.fraud.generate as generate
from augur.features.keys import feature_field, timestamp_field
from augur.features.packed import vector_field
from augur.features.redis_server import EmbeddedRedis
from augur.features.repo import REDIS_ENV, open_store
from augur.features.slots import SlotMap
from augur.pipelines.materialize import materialize
from examples.fraud.generate import Scale
from examples.fraud.scaffold import copy_definitions, feast_apply
from tests.conftest import Servers, make_repo

# Bigger than SMALL so a view's write pipeline lasts long enough to be cut (~30k keys).
SCALE = Scale(users=8_000, merchants=800, transactions=30_000, days=30)
SEED = 20_251_121  # picks the key count at which the second run is killed
RUN_TIMEOUT = 60.0

Dump = dict[bytes, tuple[bytes, object, bool]]  # key -> (type, contents, expires)


def _repo(dest: Path, server: EmbeddedRedis) -> Path:
    """A copy of the example repo on `server`, and an Augur config file for it."""
    make_repo(dest / "feature_repo", server.address, SCALE)
    return _config(dest, {"address": server.address})


def _config(dest: Path, redis_options: dict) -> Path:
    config = dest / "augur.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "feature_repo": str(dest / "feature_repo"),
                "model_repo": str(dest / "models"),
                "redis": redis_options,
            }
        )
    )
    return config


def _cluster_repo(dest: Path, cluster, data: Path) -> Path:
    """A copy of the example repo on `cluster` (redis_type: redis_cluster), with `data`'s
    offline files, and an Augur config that names one seed and redis.cluster: true, as
    infra/redis/cluster/ sets it."""
    repo = dest / "feature_repo"
    copy_definitions(repo)
    yaml_file = repo / "feature_store.yaml"
    yaml_file.write_text(
        yaml_file.read_text().replace(
            "  type: redis\n", "  type: redis\n  redis_type: redis_cluster\n"
        )
    )
    (repo / "data").mkdir()
    for source in data.glob("*.parquet"):
        shutil.copy(source, repo / "data" / source.name)
    feast_apply(repo, cluster.address)
    return _config(dest, {"address": cluster.masters[0].address, "cluster": True})


def _materialize(servers, config: Path, window: tuple[dt.datetime, dt.datetime], log: Path):
    start, end = window
    command = ["materialize", "--config", str(config)]
    command += ["--start", start.isoformat(), "--end", end.isoformat()]
    # Only the config file says where Redis is: no AUGUR_* override from this process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUGUR_")}
    with open(log, "ab") as out:
        return servers.command(*command, env=env, output=out)


def _run_to_end(servers, config: Path, window, log: Path) -> None:
    code = _materialize(servers, config, window, log).wait(RUN_TIMEOUT)
    assert code == 0, f"materialize exited with {code}:\n{log.read_text()[-3000:]}"


def _client(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port)


def _dump(server: EmbeddedRedis) -> Dump:
    """Every key: its type, its contents (all hash fields for a hash), whether it expires."""
    return _dump_of(_client(server))


def _dump_of(client: redis.Redis) -> Dump:
    keys = list(client.scan_iter(count=1_000))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
            pipe.ttl(key)
        described = pipe.execute()
        kinds, ttls = described[::2], described[1::2]
        for key, kind in zip(keys, kinds, strict=True):
            pipe.hgetall(key) if kind == b"hash" else pipe.dump(key)
        contents = pipe.execute()
    return {
        key: (kind, value, ttl != -1)
        for key, kind, ttl, value in zip(keys, kinds, ttls, contents, strict=True)
    }


def _view_fields(config: Path) -> dict[str, frozenset[bytes]]:
    """Per online view, the hash fields written for an entity: Feast's (features and
    `_ts:<view>`) and Augur's packed vector `_av:<view>`."""
    repo = yaml.safe_load(config.read_text())["feature_repo"]
    views = open_store(repo).list_feature_views()
    return {
        v.name: frozenset(
            {
                timestamp_field(v.name),
                vector_field(v.name),
                *(feature_field(v.name, f.name) for f in v.features),
            }
        )
        for v in views
        if v.online
    }


def _assert_whole_views(dump: Dump, views: dict[str, frozenset[bytes]], clean: Dump) -> int:
    """Each key holds, per view, all of the view's fields or none, each with the clean run's
    bytes. Returns how many (key, view) entries are present."""
    known = frozenset().union(*views.values())
    entries = 0
    for key, (kind, fields, _) in dump.items():
        assert kind == b"hash", f"{key!r} is a {kind!r}"
        assert fields.keys() <= known, f"{key!r} has fields of no view: {fields.keys() - known}"
        for view, wanted in views.items():
            present = fields.keys() & wanted
            assert present in (set(), wanted), (
                f"{key!r}: {len(present)} of the {len(wanted)} fields of {view}"
            )
            entries += bool(present)
        for field, value in fields.items():
            assert value == clean[key][1][field], f"{key!r} field {field!r} differs"
    return entries


@pytest.fixture(scope="module")
def window():
    """The one --start/--end of every run; every copy generates the same data even if the
    module straddles midnight UTC."""
    end_of_data = generate.default_end()
    before = os.environ.get(REDIS_ENV)  # in-process runs set it: other modules keep theirs
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generate, "default_end", lambda: end_of_data)
        yield (
            end_of_data - dt.timedelta(days=SCALE.days + 1),
            end_of_data + dt.timedelta(hours=1),
        )
    if before is None:
        os.environ.pop(REDIS_ENV, None)
    else:
        os.environ[REDIS_ENV] = before


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """`augur` processes of this module's tests, ended when it ends."""
    own = Servers(tmp_path_factory.mktemp("commands"))
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture(scope="module")
def clean(window, commands, tmp_path_factory) -> tuple[Dump, dict, Path]:
    """One uninterrupted run on one node: every key, the views' fields, and the repo's path."""
    where = tmp_path_factory.mktemp("clean")
    with EmbeddedRedis() as server:
        config = _repo(where, server)
        _run_to_end(commands, config, window, where / "clean.log")
        dump = _dump(server)
    views = _view_fields(config)
    assert len(dump) > 10_000, f"only {len(dump)} keys: no test of a cut write"
    assert _assert_whole_views(dump, views, dump) >= len(dump)
    return dump, views, where


def test_killed_run_then_rerun_equals_one_clean_run(tmp_path, window, commands, clean):
    clean, views, clean_dir = clean
    with EmbeddedRedis() as server:
        config = _repo(tmp_path / "killed", server)
        for source in sorted((clean_dir / "feature_repo" / "data").glob("*.parquet")):
            twin = tmp_path / "killed" / "feature_repo" / "data" / source.name
            assert twin.read_bytes() == source.read_bytes(), f"{source.name} differs"

        log = tmp_path / "killed.log"
        target = random.Random(SEED).randint(1, len(clean) - 1)
        client = _client(server)
        process = _materialize(commands, config, window, log)
        deadline = time.monotonic() + RUN_TIMEOUT
        while (seen := client.dbsize()) < target:
            assert process.poll() is None, f"exited before the kill:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"stuck at {seen} keys of {target}"
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        assert process.wait(RUN_TIMEOUT) == -signal.SIGKILL, "finished before it was killed"

        cut = _dump(server)
        print(f"killed at {seen} keys (target {target}); {len(cut)} of {len(clean)} left")
        _assert_whole_views(cut, views, clean)

        _run_to_end(commands, config, window, log)
        again = _dump(server)

    _assert_same(again, clean)


def _assert_same(got: Dump, clean: Dump) -> None:
    differ = [k for k in clean.keys() | got.keys() if got.get(k) != clean.get(k)]
    assert not differ, (
        f"{len(differ)} keys differ from the clean run (missing, extra or other bytes), "
        f"e.g. {differ[:3]}"
    )


# ---- the same on a Redis Cluster ---------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_config(redis_cluster, clean, tmp_path_factory) -> Path:
    return _cluster_repo(
        tmp_path_factory.mktemp("cluster"), redis_cluster, clean[2] / "feature_repo" / "data"
    )


def _masters(cluster) -> list[redis.Redis]:
    """Clients of the cluster's masters now, from the slot map of a node still running."""
    for node in cluster.nodes:
        if node.process and node.process.poll() is None:
            reply = _client(node).execute_command("CLUSTER", "SLOTS")
            return [redis.Redis(h, p) for h, p in SlotMap.from_slots_reply(reply).nodes]
    raise AssertionError("no cluster node is running")


def _cluster_dump(cluster) -> Dump:
    """`_dump` over every master: each key is on one of them only."""
    dump: Dump = {}
    for master in _masters(cluster):
        part = _dump_of(master)
        assert not part.keys() & dump.keys(), "a key on two masters"
        dump.update(part)
    return dump


def _cluster_keys(masters: list[redis.Redis]) -> int:
    return sum(m.dbsize() for m in masters)


def _flush(cluster) -> None:
    for master in _masters(cluster):
        master.flushall()
    assert _cluster_keys(_masters(cluster)) == 0


def test_killed_run_then_rerun_on_a_cluster_equals_one_clean_run(
    redis_cluster, cluster_config, window, commands, clean, tmp_path
):
    clean, views, _ = clean
    _flush(redis_cluster)
    masters = _masters(redis_cluster)
    log = tmp_path / "killed.log"
    target = random.Random(SEED + 1).randint(len(clean) // 10, len(clean) * 9 // 10)
    process = _materialize(commands, cluster_config, window, log)
    deadline = time.monotonic() + RUN_TIMEOUT
    # Killed once past the target with every master written to: each node's rows arrive in
    # bursts from a thread of its own (augur/features/cluster_write.py), and on a busy box one
    # node's first burst can come after the target is passed; the kill must cut every node.
    while (seen := _cluster_keys(masters)) < target or not all(m.dbsize() for m in masters):
        assert process.poll() is None, f"exited before the kill:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"stuck at {seen} keys of {target}"
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    assert process.wait(RUN_TIMEOUT) == -signal.SIGKILL, "finished before it was killed"
    cut = _cluster_dump(redis_cluster)
    print(f"cluster: killed at {seen} keys (target {target}); {len(cut)} of {len(clean)} left")
    _assert_whole_views(cut, views, clean)
    assert all(m.dbsize() for m in masters), "every master had its share written"

    _run_to_end(commands, cluster_config, window, log)
    _assert_same(_cluster_dump(redis_cluster), clean)


def test_a_failover_during_materialization_is_retried_and_leaves_the_same_contents(
    redis_cluster, cluster_config, window, clean
):
    """Last in the module: it leaves the cluster with a dead master."""
    clean = clean[0]
    _flush(redis_cluster)
    masters = _masters(redis_cluster)
    victim = redis_cluster.masters[1]
    replica = next(
        n
        for n in redis_cluster.replicas
        if _client(n).info("replication").get("master_port") == victim.port
    )
    repo = yaml.safe_load(cluster_config.read_text())["feature_repo"]
    failed: list[BaseException] = []

    def run() -> None:
        try:  # in this process: the seed list names every master, the dead one too
            materialize(repo, redis_cluster.address, start=window[0], end=window[1], progress=False)
        except BaseException as e:
            failed.append(e)

    target = random.Random(SEED + 2).randint(len(clean) // 10, len(clean) // 2)
    writing = threading.Thread(target=run, name="materialize")
    writing.start()
    deadline = time.monotonic() + RUN_TIMEOUT
    while (seen := _cluster_keys(masters)) < target:
        assert writing.is_alive(), f"ended before the failover: {[str(e) for e in failed]}"
        assert time.monotonic() < deadline, f"stuck at {seen} keys of {target}"
        time.sleep(0.001)
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    assert writing.is_alive(), "finished before the master was killed"
    time.sleep(0.3)  # writes to the dead master fail and are retried meanwhile
    _client(replica).execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    promoted_with = _client(replica).dbsize()
    writing.join(RUN_TIMEOUT)
    # str, not the list: redis-py's repr of its errors drops the message
    assert not writing.is_alive() and not failed, [f"{type(e).__name__}: {e}" for e in failed]
    print(f"cluster failover at {seen} keys (target {target}); the replica had {promoted_with}")
    assert _client(replica).dbsize() > promoted_with, "nothing written to the new master"
    assert victim.port not in {
        m.connection_pool.connection_kwargs["port"] for m in _masters(redis_cluster)
    }
    _assert_same(_cluster_dump(redis_cluster), clean)
