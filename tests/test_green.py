"""The green handler pool: calls run as greenlets on gRPC's polling thread (or on a hub
thread of their own), a call that waits (for its batch, or on gRPC's condition for its
request) holds no thread, and the batcher on it answers each call with its own rows."""

import socket
import threading
import time
from queue import SimpleQueue

import greenlet
import grpc
import pytest

from augur.serving import grpc_patch
from augur.serving.batcher import Batcher, Call
from augur.serving.green import GreenCondition, GreenPool, off_thread
from augur.serving.hub import Hub, RankedHub


@pytest.fixture
def pool():
    own = GreenPool(1, "test-green")
    yield own
    own.shutdown()


def test_the_pool_runs_calls_and_reports_their_results_and_failures(pool):
    ok = pool.submit(lambda a, b=0: a + b, 2, b=3)
    failing = pool.submit(lambda: 1 / 0)
    assert ok.result(timeout=10) == 5
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=10)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: None)


def test_a_calls_greenlet_runs_the_next_call_as_a_new_one_would(pool):
    """A greenlet that ended its call runs a later one (a new greenlet per call cost an mmap
    and a munmap), and that call starts as on a new greenlet: no context variable, no
    attribute left by the call before."""
    import contextvars

    seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")

    def first() -> int:
        me = greenlet.getcurrent()
        seen.set("first call's")
        me.rank = 3  # as a ranked hub marks a call
        return id(me)

    def second() -> tuple[int, str, bool]:
        me = greenlet.getcurrent()
        return id(me), seen.get(), hasattr(me, "rank")

    ran_on = pool.submit(first).result(timeout=10)
    again_on, value, ranked = pool.submit(second).result(timeout=10)
    assert again_on == ran_on
    assert value == ""
    assert not ranked


def test_a_call_waiting_on_a_condition_leaves_its_one_thread_to_the_next_call(pool):
    """On one thread, a call waiting for another call's notify would block it forever on a
    plain Condition; the green one parks it, and the thread runs the notifying call."""
    condition = GreenCondition()
    told: list[str] = []

    def waiter() -> str:
        with condition:
            while not told:
                condition.wait()
            return told[0]

    def teller() -> None:
        with condition:
            told.append("go")
            condition.notify_all()

    waiting = pool.submit(waiter)
    pool.submit(teller).result(timeout=10)
    assert waiting.result(timeout=10) == "go"


def test_a_notify_from_another_thread_resumes_the_parked_call(pool):
    condition = GreenCondition()
    ready = threading.Event()
    state: dict[str, object] = {}

    def waiter() -> object:
        with condition:
            ready.set()
            while "value" not in state:
                condition.wait()
            return state["value"]

    waiting = pool.submit(waiter)
    assert ready.wait(10)
    assert pool.submit(lambda: "meanwhile").result(timeout=10) == "meanwhile"  # not blocked
    with condition:
        state["value"] = 42
        condition.notify()
    assert waiting.result(timeout=10) == 42


def test_grpc_call_state_waits_on_a_green_condition():
    """The patch took: each gRPC call's state is built with the condition that parks a call
    on the green pool (a grpcio release that changed its server would show here first)."""
    from grpc import _server

    assert grpc_patch.install(GreenCondition)
    assert isinstance(_server._RPCState().condition, GreenCondition)
    assert getattr(_server._serve, "green", False)  # the polling loop that runs a hub


def test_grpc_is_the_release_the_green_pool_was_checked_against():
    """Moving the pin means reading grpc._server again; `make test-grpc-latest` deselects this
    one test to try the patch on the newest release."""
    assert grpc.__version__ == "1.85.1"


def test_a_batching_server_runs_its_calls_on_the_polling_thread(fraud_repo, model_repo):
    """With batching on the server's calls run on gRPC's polling thread: no handler thread
    is started, concurrent calls share batches, an open health Watch stream holds none of
    the other calls, and reflection's streaming call answers."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from prometheus_client import REGISTRY

    from augur.client.client import PredictorClient
    from augur.serving.server import start
    from tests.conftest import server_config

    config = server_config(fraud_repo, model_repo)
    config.server.batch_max_rows = 64
    config.server.batch_max_delay_us = 3_000
    earlier = set(threading.enumerate())  # other tests' servers may have left theirs
    running = start(config)
    address = f"127.0.0.1:{running.port}"
    batches = ("augur_batch_calls_count", {"model": "fraud_mlp"})
    batches_before = REGISTRY.get_sample_value(*batches) or 0.0
    channel = grpc.insecure_channel(address)
    try:
        assert isinstance(running.pool, GreenPool) and running.pool.on_polling_thread
        started = set(threading.enumerate()) - earlier
        assert not [t for t in started if t.name.startswith("augur-grpc")]
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        # the Watch stays open, waiting for a change: Predict still answers
        answers: list[float] = []
        failures: list[str] = []

        def caller(k: int) -> None:
            with PredictorClient(address, timeout=10) as own:
                for i in range(10):
                    try:
                        scores = own.predict(
                            "fraud_mlp",
                            {"user_id": [k * 10 + i], "merchant_id": [i]},
                            {"amount": [float(i)]},
                        ).scores
                        answers.append(float(scores[0, 0]))
                    except Exception as e:
                        failures.append(repr(e))

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert failures == [] and len(answers) == 80
        batches_run = (REGISTRY.get_sample_value(*batches) or 0.0) - batches_before
        assert 0 < batches_run < 80  # some calls shared a batch
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([ask]), timeout=10))
        assert "augur.v1.Predictor" in {s.name for s in reply.list_services_response.service}
        watch.cancel()
    finally:
        channel.close()
        running.stop()


def _scored_batches(pool: GreenPool, max_rows: int, delay_s: float):
    batches: list[list[int]] = []

    def run(calls: list[Call]) -> None:
        batches.append([c.rows for c in calls])
        for call in calls:
            if call.extra.get("fail"):
                raise ValueError(f"bad call {call.entities['id']}")
            call.result = [v * 10 for v in call.entities["id"]]

    return Batcher(run, max_rows, delay_s, pool.waiting), batches


def _call(batcher: Batcher, ids: list[int], fail: bool = False):
    with batcher.arrival() as arrival:
        return arrival.submit(Call({"id": ids}, {"fail": fail}, len(ids), None, route=None))


def test_calls_queued_together_share_a_batch_and_get_their_own_rows(pool):
    """Eight calls queued on one thread before it runs: each parks, and the thread runs
    them as one batch once nothing more is queued, within max_rows."""
    batcher, batches = _scored_batches(pool, max_rows=64, delay_s=30.0)
    gate = threading.Event()
    pool.submit(gate.wait, 10)  # holds the thread while the calls queue behind it
    calls = [pool.submit(_call, batcher, [k, k + 100]) for k in range(8)]
    gate.set()
    assert [c.result(timeout=10) for c in calls] == [[k * 10, (k + 100) * 10] for k in range(8)]
    assert batches == [[2] * 8]
    assert batcher.waiting() == 0


def test_a_batch_closes_at_max_rows_and_the_call_that_fills_it_runs_it(pool):
    batcher, batches = _scored_batches(pool, max_rows=4, delay_s=30.0)
    gate = threading.Event()
    pool.submit(gate.wait, 10)
    calls = [pool.submit(_call, batcher, [k]) for k in range(10)]
    gate.set()
    assert [c.result(timeout=10) for c in calls] == [[k * 10] for k in range(10)]
    assert batches == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1]]


def test_a_lone_call_does_not_wait_out_the_delay(pool):
    batcher, batches = _scored_batches(pool, max_rows=64, delay_s=30.0)
    assert pool.submit(_call, batcher, [7]).result(timeout=10) == [70]
    assert batches == [[1]]


def test_a_failing_batch_fails_each_of_its_calls_and_the_next_batch_serves(pool):
    batcher, _ = _scored_batches(pool, max_rows=64, delay_s=30.0)
    gate = threading.Event()
    pool.submit(gate.wait, 10)
    failed = [pool.submit(_call, batcher, [k], k == 1) for k in range(3)]
    gate.set()
    for call in failed:
        with pytest.raises(ValueError, match="bad call"):
            call.result(timeout=10)
    assert pool.submit(_call, batcher, [5]).result(timeout=10) == [50]


def test_a_batch_still_waiting_runs_at_its_delay_while_calls_keep_coming(pool):
    """Under a stream of other calls the queue is never empty; the batch runs once its
    delay is up (20 ms), not when the stream (100 calls of at least 1 ms) ends."""
    done: list[int] = []
    batcher, batches = _scored_batches(pool, max_rows=64, delay_s=0.02)
    run = batcher._run
    batcher._run = lambda calls: (batches.append(len(done)), run(calls))
    gate = threading.Event()
    pool.submit(gate.wait, 10)
    waiting = pool.submit(_call, batcher, [3])
    stream = [pool.submit(lambda k: (time.sleep(0.001), done.append(k)), k) for k in range(100)]
    gate.set()
    assert waiting.result(timeout=10) == [30]
    for call in stream:
        call.result(timeout=10)
    assert batches[0] < 60  # calls of the stream done when the batch ran
    assert batches[1] == [1]


def test_shutdown_answers_a_parked_call_first():
    own = GreenPool(1, "test-green-stop")
    batcher, batches = _scored_batches(own, max_rows=64, delay_s=30.0)
    gate = threading.Event()
    own.submit(gate.wait, 10)
    parked = own.submit(_call, batcher, [9])
    own.shutdown(wait=False)  # queued behind the call: the call runs, then the pool stops
    gate.set()
    assert parked.result(timeout=10) == [90]
    assert batches == [[1]]


def test_work_run_off_thread_leaves_the_pool_to_other_calls(pool):
    """A call's slow work (an Admin change loading a model) runs on a thread of its own;
    its call parks, and the pool's one thread answers other calls meanwhile."""
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(10)
        return threading.current_thread().name

    waiting = pool.submit(off_thread, slow)
    assert started.wait(10)
    assert pool.submit(lambda: "meanwhile").result(timeout=10) == "meanwhile"
    assert not waiting.done()
    release.set()
    assert waiting.result(timeout=10) == "augur-green-work"
    with pytest.raises(ZeroDivisionError):
        pool.submit(off_thread, lambda: 1 / 0).result(timeout=10)


def test_a_ranked_hub_runs_ready_calls_by_their_tenants_priority_unranked_first():
    """With tenants, the ready call of the highest priority runs next (first ready first
    within a priority), a call whose tenant is not known yet before any tenant's, and a call
    of the highest priority goes on without letting any other go first."""
    hub = RankedHub(SimpleQueue())
    ran: list[str] = []

    def call(name: str, priority: int | None) -> None:
        if priority is None:
            hub.park()  # a call reading its request: no tenant yet
        else:
            hub.rank(priority)  # parks, unless no call ranks above it
        ran.append(name)
        hub.take_turn()  # between its read and its model call: the same, again
        ran.append(name + " scored")

    calls = [("high", 10), ("low", 0), ("low-later", 0), ("unranked", None), ("middle", 5)]
    parked = {}
    for name, priority in calls:
        parked[name] = greenlet.greenlet(call)
        parked[name].switch(name, priority)  # back here, the hub's greenlet, once it parks
    assert ran == ["high", "high scored"] and hub.parked == 4
    hub.resume(parked["unranked"])  # its request came: it goes on, before any tenant's call
    while hub.run_turn():
        pass
    assert ran == [
        "high",
        "high scored",
        "unranked",
        "unranked scored",
        "middle",
        "middle scored",  # nothing above it was ready: its turn went on at once
        "low",
        "low-later",
        "low scored",
        "low-later scored",
    ]
    assert hub.parked == 0


def test_a_hub_resumes_a_read_once_its_socket_is_readable_timed_out_or_closed():
    """The polling thread's wait for Redis: a parked read goes on when its socket has data,
    with TimeoutError once the socket's timeout has passed, and, should its socket be
    closed under it, at once (its read then says why) rather than taking the loop down."""
    hub = Hub(SimpleQueue())
    outcome: dict[str, str] = {}

    def read(name: str, sock: socket.socket) -> None:
        try:
            hub.wait_readable(sock)
            outcome[name] = "readable"
        except TimeoutError:
            outcome[name] = "timed out"

    def settle() -> None:
        deadline = time.monotonic() + 5
        while hub.readers and time.monotonic() < deadline:
            hub.poll_sockets(0.01)
            while hub._ready:
                hub._ready.popleft().switch()

    answered, redis_side = socket.socketpair()
    slow, _silent = socket.socketpair()
    slow.settimeout(0.05)
    for name, sock in (("answered", answered), ("slow", slow)):
        greenlet.greenlet(read).switch(name, sock)  # parks: back here, the hub's greenlet
    assert hub.parked == 2 and set(hub.readers) == {answered, slow}
    redis_side.sendall(b"+OK\r\n")
    settle()
    assert outcome == {"answered": "readable", "slow": "timed out"}
    closed, _other = socket.socketpair()
    greenlet.greenlet(read).switch("closed", closed)
    closed.close()
    settle()
    assert outcome["closed"] == "readable" and not hub.readers and hub.parked == 0
    for sock in (answered, redis_side, slow, _silent, _other):
        sock.close()


def _predicts_concurrently(address: str, callers: int = 4, calls: int = 10) -> list[str]:
    """Each caller's Predict calls, made from threads of their own; what failed, if any."""
    from augur.client.client import PredictorClient

    failures: list[str] = []
    answered: list[int] = []

    def caller(k: int) -> None:
        with PredictorClient(address, timeout=10) as own:
            for i in range(calls):
                try:
                    scores = own.predict(
                        "fraud_mlp",
                        {"user_id": [k * 10 + i, i], "merchant_id": [i, k]},
                        {"amount": [float(i), 1.0]},
                    ).scores
                    assert scores.shape == (2, 1), scores.shape
                    answered.append(1)
                except Exception as e:
                    failures.append(repr(e))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if len(answered) + len(failures) != callers * calls:
        failures.append(f"{callers * calls - len(answered) - len(failures)} calls unanswered")
    return failures


# As on a grpcio whose server's private parts moved: the green pool's patch is refused.
_REFUSED_PATCH = """
import sys
from augur.serving import grpc_patch
grpc_patch.install = lambda condition: False
from augur.cli.main import main
sys.exit(main(["serve", "--config", sys.argv[1]]))
"""


def test_a_server_whose_grpc_patch_is_refused_serves_predict_on_a_thread_of_its_own(
    fraud_repo, model_repo, tmp_path
):
    """A fresh process where the patch of gRPC's server is refused (nothing of gRPC replaced)
    falls back to a hub thread of the pool's own, says so, and answers concurrent Predict
    calls, batched, until SIGTERM stops it cleanly."""
    import signal
    import subprocess
    import sys

    from augur.client.client import PredictorClient
    from augur.features.redis_server import free_port
    from tests.conftest import write_config

    port = free_port()
    config = write_config(
        tmp_path / "augur.yaml",
        fraud_repo,
        model_repo,
        port=port,
        metrics_port=0,
        batch_max_rows=64,
        batch_max_delay_us=2_000,
    )
    process = subprocess.Popen(
        [sys.executable, "-c", _REFUSED_PATCH, str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with PredictorClient(f"127.0.0.1:{port}", timeout=30) as client:
            client.wait_serving(["fraud_mlp"], 90, process)
        failures = _predicts_concurrently(f"127.0.0.1:{port}")
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read().decode()
    assert failures == [], output
    assert code == 0, output
    assert "not the one the green pool knows" in output
    assert "green pool, 1 handler thread(s)" in output  # not gRPC's polling thread


def test_a_server_on_a_thread_pool_serves_concurrent_batched_predicts(fraud_repo, model_repo):
    """server.handlers: threads, the pool that needs nothing of gRPC's internals, serves."""
    from concurrent.futures import ThreadPoolExecutor

    from augur.serving.server import start
    from tests.conftest import server_config

    config = server_config(fraud_repo, model_repo)
    config.server.handlers = "threads"
    config.server.batch_max_rows = 64
    config.server.batch_max_delay_us = 2_000
    running = start(config)
    try:
        assert isinstance(running.pool, ThreadPoolExecutor)
        assert _predicts_concurrently(f"127.0.0.1:{running.port}") == []
    finally:
        running.stop()
