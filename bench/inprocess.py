"""In-process timings, no RPC: the floors under a Predict call and the read paths alone.

    python -m bench.inprocess SPEC.json OUT.json    (the harness writes the spec, runs this)

Run as its own clean process (no Feast, no torch imported, nothing else running), per
request size, cycling through the same requests the load generator sends:
  redis_floor_hmget    the raw Redis round trip for the request's distinct keys: HMGET of
                  Feast's fields, commands packed once beforehand, sent, replies read; no
                  decoding
  redis_floor_hgetall  the same with HGETALL (whole hash), for wide views the cheaper one
  redis_floor_vectors  the same with HMGET of each view's packed vector and _ts
  redis_floor     the cheapest of the three: the floor under any read of these keys
  augur_read      Augur's OnlineReader.read (keys, round trip, decode, TTL, defaults)
  augur_read_fields    the same reading Feast's fields only (what a store written by plain
                  `feast materialize` costs)
  model           the model call alone: the served runtime's predict on the assembled batch
  model_lightgbm  the same through LightGBM's own predict, when the served model is compiled
  augur_pipeline  read + assemble + predict, what Predict does minus gRPC
`feast_read` (Feast's get_online_features(...).to_dict() on the same requests) runs in the
harness process instead, which has Feast imported already, in turns with Augur's read of the
same requests there (`augur_read_beside_feast`), the Augur side of the Feast ratio.
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bench.timing import stats, timed, timed_together


def _summary(ms: np.ndarray) -> dict:
    """p50 and p99, plus the mean (one caller's calls per second is 1000 / mean)."""
    return {**stats(ms), "mean_ms": round(float(ms.mean()), 4)}


def _cycle(items: list) -> Callable[[], object]:
    """The next item on each call, round and round."""
    it = itertools.cycle(items)
    return lambda: next(it)


FLOORS = ("hmget", "hgetall", "vectors")


def floor_payloads(plan, mode: str) -> Callable[[Mapping[str, Sequence]], tuple[bytes, int]]:
    """A function packing one request's entity columns into the floor's pipeline for `mode`
    (one of FLOORS): every distinct key's command, and how many commands."""
    from augur.features.commands import command_args
    from augur.features.keys import KeyEncoder

    encoders = [
        KeyEncoder(g.join_keys, [plan.entity_types[k] for k in g.join_keys], plan.project)
        for g in plan.groups
    ]

    def pack(entities: Mapping[str, Sequence]) -> tuple[bytes, int]:
        commands = []
        for group, encoder in zip(plan.groups, encoders, strict=True):
            rows = zip(*(entities[k] for k in group.join_keys), strict=True)
            keys = [encoder.key(k) for k in dict.fromkeys(rows)]
            if mode == "hgetall":
                commands += [(b"HGETALL", key) for key in keys]
            else:
                fields = group.vector_fields if mode == "vectors" else group.fields
                commands += [(b"HMGET", key, *fields) for key in keys]
        payload = b"".join(b"*%d\r\n" % len(c) + command_args(*c) for c in commands)
        return payload, len(commands)

    return pack


def floor_transport() -> Callable[..., list | bytearray]:
    """The floor's round trip, `(client, data, count, own=...)`, on Augur's own transport:
    the replies read off the socket and found complete by the C scanner where
    augur.features._native is built (what the reader itself pays before decoding), else parsed
    by hiredis (what the reader pays without it). Resolved once, so the timed calls pay no
    import or lookup the reader does not."""
    from augur.features.native import native
    from augur.features.resp import round_trip

    return functools.partial(round_trip, raw=native is not None)


def floor_replies(got: list | bytearray, count: int) -> list:
    """A floor round trip's replies, parsed (to check what was found, outside the timing)."""
    from augur.features.resp import parse

    return got if isinstance(got, list) else parse(got, 0, len(got), count)


def redis_floor(client, plan, requests: list[dict], repeats: int, mode: str) -> dict:
    """Time the round trip of each request's distinct keys (`floor_call`), alone."""
    call, found = floor_call(client, plan, requests, mode)
    return {**_summary(timed(call, repeats)), "keys_found": found()}


def floor_call(
    client, plan, requests: list[dict], mode: str
) -> tuple[Callable[[], object], Callable[[], float]]:
    """The round trip of each request's distinct keys in turn, commands packed beforehand:
    HMGET of the plan's fields, HGETALL of the whole hash, or HMGET of the vectors; and how
    to count the share of keys it finds. The transport is Augur's own (`floor_transport`, on
    a connection this thread keeps, as the reader's), so the floor is what any reader of
    these keys pays before decoding a single value. (Through redis-py's pool, as it was
    measured up to commit 3f1950e, each round trip paid 50-170 us more; up to commit
    046a69c it was parsed by hiredis, 0.03-0.2 ms more at 100 entities.)"""
    from augur.features.resp import OwnConnections

    pack = floor_payloads(plan, mode)
    packed = [pack(r["entities"]) for r in requests]
    nxt = _cycle(packed)
    own = OwnConnections(client)
    trip = floor_transport()

    def call() -> list | bytearray:
        data, count = nxt()
        return trip(client, data, count, own=own)

    def found() -> float:
        """A floor over keys that do not exist would be a fake: how many were found."""
        hits = [
            any(v is not None for v in reply)
            for data, count in packed
            for reply in floor_replies(trip(client, data, count, own=own), count)
        ]
        return round(sum(hits) / max(len(hits), 1), 3)

    return call, found


def measure(spec: dict) -> dict:
    from augur.features.connection import connect
    from augur.features.plan import ReadPlan
    from augur.features.reader import OnlineReader
    from augur.modelrepo.repository import ModelRepository
    from augur.serving.models import load_model

    plan = ReadPlan.from_json(Path(spec["plan"]).read_text())
    client = connect(spec["redis_address"])
    readers = (OnlineReader(client), OnlineReader(client, vectors=False))
    model = load_model(ModelRepository(spec["model_repo"]), spec["model"], {plan.service: plan})
    plain = None
    if model.version.spec.kind == "lightgbm" and model.version.spec.compile != "none":
        from augur.serving.runtimes.lightgbm_runtime import LightGBMRuntime

        plain = LightGBMRuntime(model.version.artifact)
    return {
        size: _measure_size(client, readers, plan, model, requests, spec["repeats"][size], plain)
        for size, requests in spec["requests"].items()
    }


def _measure_size(
    client, readers, plan, model, requests: list[dict], repeats: int, plain=None
) -> dict:
    reader, fields_reader = readers
    requests = requests[:repeats]  # the timings cycle: more would only cost set-up time
    inputs = [
        (r["entities"], {k: np.asarray(v, np.float32) for k, v in r["request_features"].items()})
        for r in requests
    ]
    batches = [model.assemble(reader.read(plan, e), x) for e, x in inputs]
    next_input, next_entities, next_fields = _cycle(inputs), _cycle(inputs), _cycle(inputs)
    next_batch, next_plain = _cycle(batches), _cycle(batches)

    def pipeline() -> None:
        entities, extra = next_input()
        model.runtime.predict(model.assemble(reader.read(plan, entities), extra))

    floors = {f"redis_floor_{mode}": floor_call(client, plan, requests, mode) for mode in FLOORS}
    calls = {name: call for name, (call, _) in floors.items()}
    calls["augur_read"] = lambda: reader.read(plan, next_entities()[0])
    calls["augur_read_fields"] = lambda: fields_reader.read(plan, next_fields()[0])
    calls["model"] = lambda: model.runtime.predict(next_batch())
    calls["augur_pipeline"] = pipeline
    if plain is not None:
        calls["model_lightgbm"] = lambda: plain.predict(next_plain())
    out = {name: _summary(ms) for name, ms in timed_together(calls, repeats).items()}
    for name, (_, found) in floors.items():
        out[name]["keys_found"] = found()
    out["redis_floor"] = min((out[name] for name in floors), key=lambda f: f["p50_ms"])
    return out


def feast_read(
    feature_repo: Path, redis_address: str, service: str, requests: dict, repeats: dict, plan=None
) -> dict:
    """Feast's own read path on the same requests, in the calling process (Feast loaded);
    given the read `plan`, Augur's reader on them too, in alternating turns in this same
    process (`augur_read_beside_feast`): the two sides of the Feast ratio meet the same
    stretch of the machine, and Augur pays for sharing a process with Feast."""
    from augur.features.connection import connect
    from augur.features.reader import OnlineReader
    from augur.features.repo import open_store

    store = open_store(feature_repo, redis_address)
    feature_service = store.get_feature_service(service)
    reader = OnlineReader(connect(redis_address)) if plan is not None else None

    def calls(entities: list) -> dict[str, Callable[[], object]]:
        feast_next, augur_next = _cycle(entities), _cycle(entities)
        out = {
            "feast_read": lambda: store.get_online_features(
                features=feature_service, entity_rows=feast_next(), full_feature_names=True
            ).to_dict()
        }
        if reader is not None:
            out["augur_read_beside_feast"] = lambda: reader.read(plan, augur_next())
        return out

    return {
        size: {
            name: _summary(ms)
            for name, ms in timed_together(
                calls([r["entities"] for r in reqs]), repeats[size]
            ).items()
        }
        for size, reqs in requests.items()
    }


def main(argv: list[str] | None = None) -> None:
    spec_path, out_path = argv if argv is not None else sys.argv[1:3]
    result = measure(json.loads(Path(spec_path).read_text()))
    Path(out_path).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
