"""The load generator: gRPC Predict calls against the servers of a plan, from a process of
its own.

    python -m bench.load PLAN.json OUT.json     (the harness writes the plan and runs this)

Steps run in order, each against one server over `connections` channels of its own
(loopback only; default 16, callers and requests spread round-robin over them), each bounded
in requests and seconds: closed loop (C callers, each sending its next request when the
last is answered) and open loop (requests start on a fixed schedule whatever the answers
do, so a slow server's queue shows in the latencies; at most `max_in_flight` outstanding,
more are counted as dropped and never sent). Latency runs from the call's actual start:
the event loop's timer wakes up to a millisecond late, which would otherwise be counted
against the server; how late each start was is reported as `send_lag_p99_ms` (large values
mean this process could not keep up).
Each step also records the CPU seconds this process, the server's process tree and Redis
(when the plan names its pid) spent per request, and how many of the machine's cores were
busy on average: whether a server could have served more on these cores, or the machine
was already full. A paired step loads several servers in alternating turns (A B, B A) and
pools each one's turns: servers compared that way meet the same drift of these shared cores,
where steps minutes apart do not. Nothing here knows which server it is talking to.

A target whose plan entry says `"protocol": "oip"` is driven with Open Inference Protocol
ModelInfer calls instead (MLServer alone, bench/model_server.py), each carrying the features
of the same pooled request as one FP32 tensor (the entry's own `pools`). Both protocols go
through the same code: grpc.aio stubs generated from Augur's own protos (the OIP ones in a
descriptor pool of their own, not tritonclient's client), every message built once before
the load, so a call costs this process one serialization of a prebuilt message and one
parse of the reply on either side (`client_cpu_ms_per_req` shows it).

Several connections because SO_REUSEPORT spreads connections, not calls, over the processes
sharing a port: over one connection a second server process would never see a call. A
service calling Augur from many pods reaches it over many connections too.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import grpc
import numpy as np
import psutil

from augur.api.oip import open_inference_pb2_grpc as oip_grpc
from augur.api.v1 import predictor_pb2 as pb
from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from bench.timing import paired_order

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # A connection per channel: by default channels to one address share one.
    ("grpc.use_local_subchannel_pool", 1),
]
CONNECTIONS = 16


def request(model: str, raw: dict) -> pb.PredictRequest:
    """A PredictRequest from plain columns; scores only (no features, no status back)."""
    entities = {}
    for name, values in raw["entities"].items():
        if values and isinstance(values[0], str):
            entities[name] = pb.EntityColumn(strings=pb.StringList(values=values))
        else:
            entities[name] = pb.EntityColumn(int64s=pb.Int64List(values=values))
    return pb.PredictRequest(
        model=model,
        entities=entities,
        request_features={
            k: pb.DoubleList(values=v) for k, v in raw.get("request_features", {}).items()
        },
    )


class Recorder:
    """Latencies of answered calls and counts of every other outcome, for one step."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter = Counter()
        self.dropped = 0
        self.send_lag: list[float] = []  # open loop: actual minus scheduled start

    async def call(self, predict, req: pb.PredictRequest, timeout: float) -> None:
        began = time.perf_counter()
        try:
            await predict(req, timeout=timeout)
            self.latencies.append(time.perf_counter() - began)
        except grpc.aio.AioRpcError as e:
            self.errors[e.code().name] += 1

    def summary(self, elapsed: float, rows: int) -> dict:
        ms = np.asarray(self.latencies) * 1e3
        ok = len(ms)
        out = {
            "sent": ok + sum(self.errors.values()),
            "ok": ok,
            "errors": dict(self.errors),
            "dropped": self.dropped,
            "elapsed_s": round(elapsed, 3),
            "throughput_rps": round(ok / elapsed, 2) if elapsed > 0 else 0.0,
            "rows_per_s": round(ok * rows / elapsed, 1) if elapsed > 0 else 0.0,
        }
        if ok:
            for q in (50, 90, 99):
                out[f"p{q}_ms"] = round(float(np.percentile(ms, q)), 4)
            out["max_ms"] = round(float(ms.max()), 4)
            out["mean_ms"] = round(float(ms.mean()), 4)
        if self.send_lag:
            out["send_lag_p99_ms"] = round(float(np.percentile(self.send_lag, 99)) * 1e3, 3)
        return out


async def closed_loop(
    predicts, pool, concurrency, max_requests, max_seconds, timeout, rec: Recorder | None = None
) -> float:
    """Caller i calls through connection i modulo their number; returns the seconds it took,
    the calls recorded in `rec`."""
    rec, issued = rec if rec is not None else Recorder(), 0
    start = time.perf_counter()
    stop_at = start + max_seconds

    async def caller(predict) -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < stop_at:
            req = pool[issued % len(pool)]
            issued += 1
            await rec.call(predict, req, timeout)

    await asyncio.gather(*(caller(predicts[i % len(predicts)]) for i in range(concurrency)))
    return time.perf_counter() - start


async def open_loop(
    predicts, pool, rate, max_requests, max_seconds, max_in_flight, timeout, rec: Recorder
) -> float:
    in_flight, tasks = 0, set()
    count = max(1, min(max_requests, int(rate * max_seconds)))

    async def one(predict, req) -> None:
        nonlocal in_flight
        try:
            await rec.call(predict, req, timeout)
        finally:
            in_flight -= 1

    start = time.perf_counter() + 0.002
    for k in range(count):
        scheduled = start + k / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= max_in_flight:
            rec.dropped += 1
            continue
        rec.send_lag.append(max(time.perf_counter() - scheduled, 0.0))
        in_flight += 1
        task = asyncio.create_task(one(predicts[k % len(predicts)], pool[k % len(pool)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*list(tasks))
    return time.perf_counter() - start


class ProcessCpu:
    """CPU seconds (user + system) of a process and its children so far."""

    def __init__(self, pid: int | None):
        self.process = psutil.Process(pid) if pid else psutil.Process()

    def seconds(self) -> float:
        total = 0.0
        for p in [self.process, *self.process.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total


class MachineCpu:
    """Cores the whole machine kept busy (every process, the kernel included) since `start`:
    what a second server process, or any saving, has to work with. The busy share of the
    time the kernel accounted on every CPU, times the CPUs: the kernel counts in ticks
    (10 ms), which over a short step would move a count against the wall clock by tenths of
    a core, past the machine's CPUs; against its own total they cancel."""

    def __init__(self) -> None:
        self._cpus = psutil.cpu_count() or 1  # the CPUs psutil.cpu_times() sums over

    def start(self) -> None:
        self._busy, self._total = self._seconds()

    def cores(self) -> float:
        busy, total = self._seconds()
        spent = total - self._total
        return (busy - self._busy) / spent * self._cpus if spent > 0 else 0.0

    @staticmethod
    def _seconds() -> tuple[float, float]:
        """(busy, all) seconds, summed over the CPUs."""
        t = psutil.cpu_times()
        # Linux counts a guest's time in user's too: summed once
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        return total - t.idle - getattr(t, "iowait", 0.0), total


@dataclass
class Target:
    """One server under load: its connections, its process tree's CPU clock, and the
    requests it is sent (rows -> prebuilt messages)."""

    predicts: list
    channels: list
    cpu: ProcessCpu
    pools: dict


def _target(server: dict, model: str, pools: dict, connections: int) -> Target:
    """Channels and calls for one plan target: augur.v1 Predict of the shared `pools`, or
    (`"protocol": "oip"`) ModelInfer of the target's own feature pools."""
    from bench.model_server import infer_request  # only the MLServer baseline needs it

    channels = [
        grpc.aio.insecure_channel(server["address"], options=CHANNEL_OPTIONS)
        for _ in range(connections)
    ]
    if server.get("protocol") == "oip":
        calls = [oip_grpc.GRPCInferenceServiceStub(c).ModelInfer for c in channels]
        pools = {int(k): [infer_request(model, r) for r in v] for k, v in server["pools"].items()}
    else:
        calls = [pb_grpc.PredictorStub(channel).Predict for channel in channels]
    return Target(calls, channels, ProcessCpu(server.get("server_pid")), pools)


@dataclass
class Spent:
    """What a step cost while it ran: seconds of wall clock, of CPU (the server's, this
    process's, Redis's) and of busy cores (busy cores times seconds)."""

    elapsed: float = 0.0
    server: float = 0.0
    client: float = 0.0
    redis: float = 0.0
    core_seconds: float = 0.0

    def add(self, other: Spent) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


async def _measure(step: dict, target: Target, pool, timeout, redis_cpu, machine, rec) -> Spent:
    """Run one step's load at `target`, recording into `rec`."""
    cpu_server, cpu_own = target.cpu.seconds(), time.process_time()
    cpu_redis = redis_cpu.seconds() if redis_cpu else 0.0
    machine.start()
    if step["mode"] == "closed":
        elapsed = await closed_loop(
            target.predicts,
            pool,
            step["concurrency"],
            step["max_requests"],
            step["max_seconds"],
            timeout,
            rec,
        )
    else:
        elapsed = await open_loop(
            target.predicts,
            pool,
            step["rate"],
            step["max_requests"],
            step["max_seconds"],
            step.get("max_in_flight", 256),
            timeout,
            rec,
        )
    return Spent(
        elapsed,
        target.cpu.seconds() - cpu_server,
        time.process_time() - cpu_own,
        (redis_cpu.seconds() - cpu_redis) if redis_cpu else 0.0,
        machine.cores() * elapsed,
    )


def _entry(step: dict, rec: Recorder, spent: Spent, redis: bool) -> dict:
    entry = {**step, **rec.summary(spent.elapsed, step["rows"])}
    sent = max(entry["sent"], 1)
    entry["server_cpu_ms_per_req"] = round(spent.server * 1e3 / sent, 4)
    entry["client_cpu_ms_per_req"] = round(spent.client * 1e3 / sent, 4)
    if redis:
        entry["redis_cpu_ms_per_req"] = round(spent.redis * 1e3 / sent, 4)
    busy = spent.core_seconds / spent.elapsed if spent.elapsed > 0 else 0.0
    entry["machine_busy_cores"] = round(busy, 3)
    return entry


async def run(plan: dict) -> list[dict]:
    """The plan's steps in order. A step naming `target` loads that server (the plan's
    first when it names none); a paired step, naming `targets` and `rounds`, loads each of
    them in turn (paired_order), each turn bounded as a step is, and gives one entry per
    server, its turns' calls pooled."""
    pools = {int(k): [request(plan["model"], r) for r in v] for k, v in plan["pools"].items()}
    timeout = plan.get("timeout_s", 10.0)
    redis_cpu = ProcessCpu(plan["redis_pid"]) if plan.get("redis_pid") else None
    machine = MachineCpu()
    connections = plan.get("connections", CONNECTIONS)
    targets = {
        name: _target(server, plan["model"], pools, connections)
        for name, server in plan["targets"].items()
    }
    try:
        warm = plan.get("warmup_requests", 50), plan.get("warmup_seconds", 2.0)
        for target in targets.values():  # connections, server-side caches, lazy imports
            callers = max(4, len(target.predicts))
            for pool in target.pools.values():
                await closed_loop(target.predicts, pool, callers, *warm, timeout)
        results = []
        measure = functools.partial(_measure, timeout=timeout, redis_cpu=redis_cpu, machine=machine)
        for step in plan["steps"]:
            # a plain step is a paired step of one server and one turn
            names = step.get("targets") or [step.get("target", next(iter(targets)))]
            turns = {name: (Recorder(), Spent()) for name in names}
            for name in paired_order(names, step.get("rounds", 1)):
                rec, spent = turns[name]
                pool = targets[name].pools[step["rows"]]
                spent.add(await measure(step, targets[name], pool, rec=rec))
            shared = {k: v for k, v in step.items() if k != "targets"}
            for name, (rec, spent) in turns.items():
                entry = _entry({**shared, "target": name}, rec, spent, redis_cpu is not None)
                results.append(entry)
    finally:
        for target in targets.values():
            for channel in target.channels:
                await channel.close()
    return results


def main(argv: list[str] | None = None) -> None:
    plan_path, out_path = argv if argv is not None else sys.argv[1:3]
    plan = json.loads(Path(plan_path).read_text())
    results = asyncio.run(run(plan))
    Path(out_path).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
