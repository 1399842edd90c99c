"""The batcher on its own, driven by real threads: batches stay within max_rows, every
call gets its own answer or its batch's error, and a batch waits for announced calls only
while they are on their way."""

import threading
import time

import pytest

from augur.serving.batcher import Batcher, Call


def _call(rows: int, tag: object) -> Call:
    return Call({"id": [tag] * rows}, {}, rows, None, None)


def _submit(batcher: Batcher, call: Call):
    with batcher.arrival() as arrival:
        return arrival.submit(call)


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)


def test_concurrent_calls_share_batches_within_max_rows_and_get_their_own_answers():
    batches: list[list[int]] = []

    def run(batch: list[Call]) -> None:
        batches.append([c.rows for c in batch])
        time.sleep(0.002)  # a read and a model call: others queue meanwhile
        for call in batch:
            call.result = (call.entities["id"][0], call.rows)

    batcher = Batcher(run, max_rows=6, max_delay_s=0.001)
    answers: dict[tuple[int, int], object] = {}

    def caller(worker: int) -> None:
        for k in range(25):
            rows = 1 + (worker + k) % 4
            answers[worker, k] = (_submit(batcher, _call(rows, (worker, k))), rows)

    _join([threading.Thread(target=caller, args=(w,)) for w in range(12)])
    assert len(answers) == 12 * 25
    for key, (answer, rows) in answers.items():
        assert answer == (key, rows)
    assert sum(len(b) for b in batches) == 12 * 25
    assert all(sum(b) <= 6 for b in batches)  # no call here is wider than a batch
    assert max(len(b) for b in batches) > 1  # and calls did share batches
    assert batcher.waiting() == 0


def test_a_call_wider_than_max_rows_runs_alone():
    seen: list[list[int]] = []

    def run(batch: list[Call]) -> None:
        seen.append([c.rows for c in batch])
        for call in batch:
            call.result = call.rows

    batcher = Batcher(run, max_rows=4, max_delay_s=0.001)
    assert _submit(batcher, _call(9, "wide")) == 9
    assert seen == [[9]]


def test_a_failing_batch_fails_its_own_calls_only():
    failed_batches: list[set] = []

    def run(batch: list[Call]) -> None:
        tags = {c.entities["id"][0] for c in batch}
        time.sleep(0.001)
        if any(tag[1] == 0 for tag in tags):  # each worker's first call poisons its batch
            failed_batches.append(tags)
            raise ValueError("model failed")
        for call in batch:
            call.result = call.entities["id"][0]

    batcher = Batcher(run, max_rows=8, max_delay_s=0.001)
    errors: dict[tuple[int, int], BaseException] = {}
    answers: dict[tuple[int, int], object] = {}

    def caller(worker: int) -> None:
        for k in range(10):
            try:
                answers[worker, k] = _submit(batcher, _call(1, (worker, k)))
            except ValueError as e:
                errors[worker, k] = e

    _join([threading.Thread(target=caller, args=(w,)) for w in range(6)])
    assert set(errors) == set().union(*failed_batches)
    assert all(str(e) == "model failed" for e in errors.values())
    assert all(answers[key] == key for key in answers)
    assert len(errors) + len(answers) == 60 and len(answers) >= 60 - 6 * 8


def test_a_lone_call_does_not_wait_out_the_delay():
    batcher = Batcher(lambda batch: setattr(batch[0], "result", "ok"), 64, max_delay_s=30)
    began = time.monotonic()
    assert _submit(batcher, _call(1, 0)) == "ok"
    assert time.monotonic() - began < 5  # nowhere near the 30 s delay


@pytest.mark.parametrize("announced", ["withdrawn", "submitted"])
def test_a_batch_waits_for_an_announced_call_only_while_it_is_on_its_way(announced):
    batches: list[list[object]] = []

    def run(batch: list[Call]) -> None:
        batches.append([c.entities["id"][0] for c in batch])
        for call in batch:
            call.result = call.entities["id"][0]

    batcher = Batcher(run, max_rows=64, max_delay_s=30)
    answered = threading.Event()
    with batcher.arrival() as late:  # announced: still decoding its request
        waiter = threading.Thread(
            target=lambda: _submit(batcher, _call(1, "first")) and answered.set()
        )
        waiter.start()
        assert not answered.wait(0.2)  # the batch is held open for the announced call
        if announced == "submitted":
            assert late.submit(_call(1, "late")) == "late"
    # leaving the block unsubmitted withdraws it, and the batch closes without waiting 30 s
    assert answered.wait(5)
    waiter.join(5)
    assert batches == ([["first"]] if announced == "withdrawn" else [["first", "late"]])
