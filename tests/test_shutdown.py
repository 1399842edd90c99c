"""`augur serve` as its own process: SIGTERM lets in-flight calls finish, then it exits."""

import signal
import threading
import time

import grpc
import numpy as np

from augur.client.client import PredictorClient


def test_sigterm_drains_in_flight_calls(fraud_repo, model_repo, servers):
    process = servers.serve(
        fraud_repo, model_repo, metrics_port=0, grace_seconds=10, max_rows=10_000
    )
    port = process.port
    try:
        with PredictorClient(f"127.0.0.1:{port}", timeout=30) as client:
            client.wait_serving(["fraud_mlp"], 90, process)

            rng = np.random.default_rng(0)
            n = 10_000
            entities = {"user_id": rng.integers(0, 400, n), "merchant_id": rng.integers(0, 80, n)}
            results: list[tuple[float, float, str]] = []  # (sent, answered, outcome)
            pending: list[float] = []  # when the call not yet answered was sent

            def call() -> None:
                while len(results) < 20:  # large calls back to back until the server refuses
                    sent = time.monotonic()
                    pending[:] = [sent]
                    try:
                        shape = client.predict(
                            "fraud_mlp", entities, {"amount": np.ones(n)}, timeout=30
                        ).scores.shape
                        outcome = "OK" if shape == (n, 1) else f"shape {shape}"
                    except grpc.RpcError as e:
                        outcome = e.code().name
                    pending.clear()
                    results.append((sent, time.monotonic(), outcome))
                    if outcome != "OK":
                        return

            worker = threading.Thread(target=call)
            worker.start()
            while not results:  # one full call first, to learn how long one takes
                time.sleep(0.01)
            # SIGTERM a quarter of a call's time after the next was sent: the server has
            # accepted it by then. A SIGTERM a few ms after the send can beat the call to
            # the server, which then cancels it rather than draining it.
            quarter = (results[0][1] - results[0][0]) / 4
            give_up = time.monotonic() + 30
            while time.monotonic() < give_up:
                sent = pending[:1]
                if sent and time.monotonic() - sent[0] >= quarter:
                    break
                time.sleep(0.001)
            sigterm_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            worker.join(60)
            code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read().decode()
    assert code == 0, output
    assert "draining in-flight calls" in output
    in_flight = [r for r in results if r[0] < sigterm_at < r[1]]
    assert in_flight and all(outcome == "OK" for _, _, outcome in in_flight), results
    assert results[-1][2] == "UNAVAILABLE", results  # later calls are refused, not hung
