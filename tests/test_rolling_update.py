"""A rolling update at the process level loses no call: under load, a second `augur serve`
binds the same port (SO_REUSEPORT, as the supervisor's children do), and once it is SERVING
the first gets SIGTERM, drains and exits; every call of the load is answered OK.

This is what a Deployment with maxUnavailable 0 does per pod (infra/k8s/deployment.yaml), and
what an operator does on one host: new process up, then the old one stopped (docs/fleet.md).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import grpc
import numpy as np

from augur.client.client import PredictorClient
from augur.features.redis_server import free_port

CALLERS = 4
MAX_CALLS = 20_000  # bounds the load whatever the timing
START_TIMEOUT_S = 120.0
SERVER = {"reuse_port": True, "grace_seconds": 5, "max_rows": 1_000}


def test_a_new_server_on_the_same_port_takes_over_under_load_without_losing_a_call(
    fraud_repo, model_repo, servers
):
    port = free_port()
    old = servers.serve(fraud_repo, model_repo, port=port, **SERVER)
    with PredictorClient(f"127.0.0.1:{port}", timeout=10) as probe:
        probe.wait_serving(["fraud_lgbm"], START_TIMEOUT_S, old)

    outcomes: Counter[str] = Counter()
    after_old_exited = Counter()
    old_gone = threading.Event()
    stop = threading.Event()
    rng = np.random.default_rng(5)

    def caller(seed: int) -> None:
        users = rng.integers(0, 400, 8)
        merchants = np.random.default_rng(seed).integers(0, 80, 8)
        with PredictorClient(f"127.0.0.1:{port}", timeout=10) as client:
            while not stop.is_set() and outcomes.total() < MAX_CALLS:
                try:
                    client.predict(
                        "fraud_lgbm", {"user_id": users, "merchant_id": merchants},
                        {"amount": np.ones(8)},
                    )  # fmt: skip
                    outcome = "OK"
                except grpc.RpcError as e:
                    outcome = f"{e.code().name}: {e.details()}"
                outcomes[outcome] += 1
                if old_gone.is_set():
                    after_old_exited[outcome] += 1

    callers = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    for thread in callers:
        thread.start()
    try:
        time.sleep(1.0)
        new = servers.serve(fraud_repo, model_repo, port=port, **SERVER)
        _wait_for_log(new, "serving ", START_TIMEOUT_S)
        served_by_old = outcomes.total()
        old.send_signal(signal.SIGTERM)
        assert old.wait(30) == 0, "the old server did not drain and exit cleanly"
        old_gone.set()
        deadline = time.monotonic() + 10
        while after_old_exited.total() < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in callers:
            thread.join(30)

    assert served_by_old > 0, "no load ran before the update"
    assert after_old_exited["OK"] >= 200, f"the new server did not take the load: {outcomes}"
    assert set(outcomes) == {"OK"}, f"calls lost in the update: {outcomes}"
    assert new.poll() is None, "the new server exited"


def _wait_for_log(process, text: str, timeout: float) -> None:
    """Read the process's output until a line holds `text` (its "serving ..." line comes once
    the port is open and every model loaded); keep draining it afterwards."""
    found = threading.Event()

    def read() -> None:
        for line in process.stdout:
            if text.encode() in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.2):
        assert process.poll() is None, f"the new server exited with {process.returncode}"
        assert time.monotonic() < deadline, f"no {text!r} line after {timeout:g}s"
