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
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import time
from pathlib import Path

import redis
import yaml

import examples.fraud.generate as generate
from augur.features.keys import feature_field, timestamp_field
from augur.features.packed import vector_field
from augur.features.redis_server import EmbeddedRedis
from augur.features.repo import open_store
from examples.fraud.generate import Scale
from tests.conftest import make_repo

# Bigger than SMALL so a view's write pipeline lasts long enough to be cut (~30k keys).
SCALE = Scale(users=8_000, merchants=800, transactions=30_000, days=30)
SEED = 20_251_121  # picks the key count at which the second run is killed
RUN_TIMEOUT = 60.0

Dump = dict[bytes, tuple[bytes, object, bool]]  # key -> (type, contents, expires)


def _repo(dest: Path, server: EmbeddedRedis) -> Path:
    """A copy of the example repo on `server`, and an Augur config file for it."""
    make_repo(dest / "feature_repo", server.address, SCALE)
    config = dest / "augur.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "feature_repo": str(dest / "feature_repo"),
                "model_repo": str(dest / "models"),
                "redis": {"address": server.address},
            }
        )
    )
    return config


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
    client = _client(server)
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


def test_killed_run_then_rerun_equals_one_clean_run(tmp_path, monkeypatch, servers):
    # Both copies generate the same data even if the test straddles midnight UTC.
    end_of_data = generate.default_end()
    monkeypatch.setattr(generate, "default_end", lambda: end_of_data)
    window = (
        end_of_data - dt.timedelta(days=SCALE.days + 1),
        end_of_data + dt.timedelta(hours=1),
    )

    with EmbeddedRedis() as server:
        config = _repo(tmp_path / "clean", server)
        _run_to_end(servers, config, window, tmp_path / "clean.log")
        clean = _dump(server)
    views = _view_fields(config)
    assert len(clean) > 10_000, f"only {len(clean)} keys: no test of a cut write"
    assert _assert_whole_views(clean, views, clean) >= len(clean)

    with EmbeddedRedis() as server:
        config = _repo(tmp_path / "killed", server)
        for source in sorted((tmp_path / "clean" / "feature_repo" / "data").glob("*.parquet")):
            twin = tmp_path / "killed" / "feature_repo" / "data" / source.name
            assert twin.read_bytes() == source.read_bytes(), f"{source.name} differs"

        log = tmp_path / "killed.log"
        target = random.Random(SEED).randint(1, len(clean) - 1)
        client = _client(server)
        process = _materialize(servers, config, window, log)
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

        _run_to_end(servers, config, window, log)
        again = _dump(server)

    differ = [k for k in clean.keys() | again.keys() if again.get(k) != clean.get(k)]
    assert not differ, (
        f"{len(differ)} keys differ from the clean run (missing, extra or other bytes), "
        f"e.g. {differ[:3]}"
    )
