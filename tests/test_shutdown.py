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


def test_sigterm_on_a_busy_green_pool_answers_every_call_in_flight(fraud_repo, model_repo, servers):
    """16 callers of one row and one of 10k rows, back to back, on the default green pool:
    calls that reach the server while its one polling thread runs others wait in gRPC's core,
    which cancels them at shutdown unless the pool takes them first (3-12 of 16 CANCELLED)."""
    process = servers.serve(
        fraud_repo, model_repo, metrics_port=0, grace_seconds=10, max_rows=10_000
    )
    calls: list[tuple[int, float, float, str]] = []  # (rows, sent, answered, outcome)
    lock = threading.Lock()
    large_sent: list[float] = []  # when the 10k-row call not yet answered was sent
    try:
        with PredictorClient(f"127.0.0.1:{process.port}", timeout=30) as client:
            client.wait_serving(["fraud_mlp"], 90, process)

            def caller(rows: int, seed: int) -> None:
                rng = np.random.default_rng(seed)
                entities = {
                    "user_id": rng.integers(0, 400, rows),
                    "merchant_id": rng.integers(0, 80, rows),
                }
                for _ in range(100_000):  # until the server refuses (bounded all the same)
                    sent = time.monotonic()
                    if rows > 1:
                        large_sent[:] = [sent]
                    try:
                        scores = client.predict(
                            "fraud_mlp", entities, {"amount": np.ones(rows)}, timeout=30
                        ).scores
                        outcome = "OK" if scores.shape == (rows, 1) else f"shape {scores.shape}"
                    except grpc.RpcError as e:
                        outcome = e.code().name
                    if rows > 1:
                        large_sent.clear()
                    with lock:
                        calls.append((rows, sent, time.monotonic(), outcome))
                    if outcome != "OK":
                        return

            workers = [threading.Thread(target=caller, args=(1, i)) for i in range(16)]
            workers.append(threading.Thread(target=caller, args=(10_000, 16)))
            for worker in workers:
                worker.start()
            while sum(rows > 1 for rows, *_ in calls) < 2:  # every caller going
                time.sleep(0.01)
            large = [c for c in calls if c[0] > 1]
            quarter = min(answered - sent for _, sent, answered, _ in large) / 4
            give_up = time.monotonic() + 30
            while time.monotonic() < give_up:  # the 10k-row call has reached the server
                sent = large_sent[:1]
                if sent and time.monotonic() - sent[0] >= quarter:
                    break
                time.sleep(0.001)
            sigterm_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.join(60)
            code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read().decode()
    assert code == 0, output
    in_flight = [c for c in calls if c[1] < sigterm_at < c[2]]
    assert sum(rows == 1 for rows, *_ in in_flight) == 16, in_flight
    assert [c[3] for c in in_flight if c[0] > 1] == ["OK"], in_flight
    # Nothing cancelled: a call answers, or it is refused as sent after the stop began (a
    # call sent a moment before the signal may still reach the server after it)
    assert {c[3] for c in calls} <= {"OK", "UNAVAILABLE"}, in_flight
    late = sigterm_at - 0.01
    assert all(c[1] > late for c in calls if c[3] == "UNAVAILABLE"), in_flight
    assert len([c for c in calls if c[3] == "UNAVAILABLE"]) == 17  # later calls refused
