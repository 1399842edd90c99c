"""augur.features._native, the read path's loops in C: built where a compiler is, the same
bytes and numbers as the Python paths, and safe on any bytes Redis (or anything else) sends.

That reads through it equal Feast's own is tests/test_differential.py's job (every read path
there runs in C and in numpy); this file checks the C functions one by one.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from augur.client.client import PredictorClient
from augur.features.commands import around_key
from augur.features.connection import connect
from augur.features.entities import DistinctKeys, NativeKeys
from augur.features.keys import KeyEncoder
from augur.features.native import native
from augur.features.packed import HEADER_BYTES
from augur.features.reader import OnlineReader
from augur.features.repo import build_plan
from augur.serving.wire import wire

needs_native = pytest.mark.skipif(native is None, reason="augur.features._native is not built")


@pytest.mark.parametrize("built", [native, wire], ids=["read path", "Predict's wire codec"])
def test_the_c_extensions_are_built_where_a_compiler_is(built):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the numpy and protobuf paths serve alone")
    assert built is not None, "setup.py's optional extension failed to build: see pip's log"


@needs_native
@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 3).flatmap(
        lambda k: st.lists(
            st.tuples(*[st.integers(-(2**63), 2**63 - 1) | st.integers(0, 5)] * k),
            min_size=1,
            max_size=300,
        )
    )
)
def test_dedupe_numbers_rows_in_order_of_first_appearance(rows):
    columns = [np.array(c, np.int64) for c in zip(*rows, strict=True)]
    inverse, first = np.empty(len(rows), np.int64), np.empty(len(rows), np.int64)
    distinct = native.dedupe_int64(columns, inverse, first)

    index: dict[tuple, int] = {}
    expected = [index.setdefault(row, len(index)) for row in rows]
    assert distinct == len(index)
    assert inverse.tolist() == expected
    assert [rows[i] for i in first[:distinct]] == list(index)
    # the request decoder's lists of ints are read as they are, to the same numbering
    again = np.empty(len(rows), np.int64)
    assert native.dedupe_int64([c.tolist() for c in columns], again, first) == distinct
    assert again.tolist() == expected


@needs_native
def test_columns_that_are_not_int64_are_refused():
    inverse, first = np.empty(2, np.int64), np.empty(2, np.int64)
    with pytest.raises(ValueError, match="int64"):
        native.dedupe_int64([np.array([1.0, 2.0])], inverse, first)
    with pytest.raises(TypeError):
        native.dedupe_int64([[1, 2.5]], inverse, first)
    with pytest.raises(OverflowError):
        native.dedupe_int64([[1, 2**63]], inverse, first)
    with pytest.raises(ValueError, match="one length"):
        native.dedupe_int64([[1, 2], [1]], inverse, first)


@needs_native
@pytest.mark.parametrize("join_keys", [("user_id",), ("user_id", "merchant_id")])
def test_commands_are_the_bytes_python_builds(join_keys):
    encoder = KeyEncoder(join_keys, ["int64"] * len(join_keys), "fraud")
    rng = np.random.default_rng(0)
    columns = [
        [*rng.integers(-(2**62), 2**62, 50).tolist(), 2**63 - 1, -(2**63)] for _ in join_keys
    ]
    columns = [c + c[:7] for c in columns]  # repeated entities
    keys, inverse = NativeKeys.build(encoder, columns, len(columns[0]))

    index: dict[tuple, int] = {}
    rows = list(zip(*columns, strict=True))
    assert inverse.tolist() == [index.setdefault(r, len(index)) for r in rows]
    python_keys = [encoder.key(r) for r in index]
    assert list(keys) == python_keys
    head, tail = around_key(b"HMGET", (b"_av:user_stats", b"_ts:user_stats"))
    assert keys.commands(head, tail) == DistinctKeys(python_keys).commands(head, tail)


REPLIES = (
    b"$3\r\nabc\r\n"  # bulk
    b"$-1\r\n"  # null
    b"*2\r\n$0\r\n\r\n:12\r\n"  # array
    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    b"*-1\r\n"  # null array
    b"%1\r\n+k\r\n*1\r\n_\r\n"  # RESP3 map holding an array holding a null
)


@needs_native
def test_scan_finds_where_replies_end_and_counts_errors():
    assert native.scan(REPLIES, 0, 6) == (len(REPLIES), 1)
    assert native.scan(REPLIES, 0, 1) == (len(b"$3\r\nabc\r\n"), 0)
    assert native.scan(REPLIES, 0, 0) == (0, 0)
    for cut in range(len(REPLIES)):  # every partial read: not all here yet
        end, _ = native.scan(REPLIES[:cut], 0, 6)
        assert end == -1, cut
    assert native.scan(b"?what\r\n", 0, 1)[0] == -2
    assert native.scan(b"$x\r\nabc\r\n", 0, 1)[0] == -2
    with pytest.raises(ValueError):
        native.scan(REPLIES, len(REPLIES) + 1, 1)


def _vector(layout: int, width: int, stamp: bytes, values: list[float]) -> bytes:
    head = b"AV" + layout.to_bytes(4, "little") + (5).to_bytes(8, "little", signed=True)
    head += (250_000_000).to_bytes(4, "little", signed=True) + bytes([len(stamp)])
    head += stamp.ljust(20, b"\0")
    assert len(head) == HEADER_BYTES
    return head + np.array(values, "<f4").tobytes()


def _bulk(value: bytes | None) -> bytes:
    return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)


def _decode(data, count: int, layout: int = 7, width: int = 3, pick=(2, 0)):
    views = ((layout, width, 0, np.array(pick, np.int32)),)
    vals = np.zeros((count, len(pick)), np.float32)
    ts = np.zeros((count, 1))
    flags = np.zeros(count, np.uint8)
    got = native.decode_vectors(data, 0, count, views, len(pick), vals, ts, flags)
    return got, vals, ts, flags


@needs_native
def test_vectors_are_checked_against_their_stamp_and_layout():
    stamp = b"\x08\x05\x10\x80\xe1\xeb\x77"
    good = _vector(7, 3, stamp, [1.0, 2.0, 3.0])
    replies = [
        (good, stamp),  # current: values picked (the plan wants positions 2 and 0)
        (good, stamp[:-1] + b"\x78"),  # `_ts` rewritten by a plain Feast write: outdated
        (_vector(8, 3, stamp, [1.0, 2.0, 3.0]), stamp),  # another layout
        (None, stamp),  # no vector, Feast's fields only
        (good, None),  # no `_ts`: the entity has no data in this view
        (None, None),
    ]
    data = b"".join(b"*2\r\n" + _bulk(v) + _bulk(t) for v, t in replies)
    (end, fallbacks, with_data), vals, ts, flags = _decode(data, len(replies))
    assert end == len(data)
    assert vals[0].tolist() == [3.0, 1.0] and ts[0, 0] == 5.25
    assert np.isnan(vals[1:]).all() and np.isnan(ts[1:, 0]).all()
    assert flags.tolist() == [2, 3, 3, 3, 0, 0]
    assert (fallbacks, with_data) == (3, 4)


@needs_native
def test_decoding_refuses_other_shapes_and_never_reads_past_the_bytes():
    stamp = b"\x08\x05"
    one = b"*2\r\n" + _bulk(_vector(7, 3, stamp, [1.0, 2.0, 3.0])) + _bulk(stamp)
    assert _decode(one, 1)[0][0] == len(one)
    assert _decode(b"*3\r\n" + one[4:] + b":1\r\n", 1)[0][0] == -2  # not 2 per view
    assert _decode(b"-ERR no\r\n", 1)[0][0] == -2
    for cut in range(len(one)):
        assert _decode(one[:cut], 1)[0][0] in (-1, -2), cut
    views = ((7, 3, 0, np.array([2, 0], np.int32)),)
    small = np.zeros((1, 2), np.float32)  # room for one entity's values, asked for two
    with pytest.raises(ValueError, match="vals"):
        native.decode_vectors(one * 2, 0, 2, views, 2, small, np.zeros(2), np.zeros(2, np.uint8))
    with pytest.raises(ValueError):  # a pick outside the stored vector
        _decode(one, 1, pick=(3,))


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 4))
def test_any_bytes_are_decoded_or_refused_without_harm(data, count):
    got = _decode(data, count)[0][0]
    assert got in (-1, -2) or 0 <= got <= len(data)
    end, errors = native.scan(data, 0, count)
    assert end in (-1, -2) or 0 <= end <= len(data)
    assert errors >= 0


@pytest.fixture(scope="module")
def plan(fraud_repo):
    return build_plan(fraud_repo.store, "fraud_lgbm")


@pytest.mark.parametrize("use_native", [True, False])
def test_an_error_reply_raises_on_either_path(fraud_repo, plan, use_native):
    """A key holding a string (WRONGTYPE for HMGET) fails the read with Redis's error,
    whether the replies are parsed in C or by hiredis."""
    client = connect(fraud_repo.address)
    user = 900_400  # an id the generator never makes
    key = KeyEncoder(["user_id"], ["int64"], plan.project).key([user])
    client.set(key, b"not a hash")
    try:
        reader = OnlineReader(client, use_native=use_native)
        users = [user, *range(40)]
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            reader.read(plan, {"user_id": users, "merchant_id": list(range(41))})
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):  # a read of one row
            reader.read(plan, {"user_id": [user], "merchant_id": [0]})
        # the connection is still good for the next read
        rows = reader.read(plan, {"user_id": list(range(41)), "merchant_id": list(range(41))})
        assert rows.values.shape == (41, len(plan.columns))
    finally:
        client.delete(key)


@needs_native
@pytest.mark.parametrize("n", [1, 2, 3, 61])  # up to 3 rows: augur.features._native.read_few
def test_the_c_assembly_applies_ttl_and_defaults_like_numpy(fraud_repo, plan, n):
    """The same entities, read through C and through numpy, with and without TTL, at a
    clock that puts every value past its view's TTL: equal values and counts."""
    users = [*range(1, n), 999_999]  # the last user unknown: defaults and gaps
    merchants = list(range(1, n + 1))
    entities = {"user_id": users, "merchant_id": merchants}
    client = connect(fraud_repo.address)
    for clock in (None, lambda: 4e9):
        kwargs = {} if clock is None else {"clock": clock}
        a = OnlineReader(client, **kwargs)
        b = OnlineReader(client, use_native=False, **kwargs)
        for enforce in (True, False):
            x, y = (
                a.read(plan, entities, enforce_ttl=enforce),
                b.read(plan, entities, enforce_ttl=enforce),
            )
            np.testing.assert_array_equal(x.values, y.values)
            np.testing.assert_array_equal(x.event_ts, y.event_ts)
            assert x.missing.tolist() == y.missing.tolist()
            assert x.stale.tolist() == y.stale.tolist()
            assert x.distinct_keys == y.distinct_keys
            # the C assembly's totals (what the metrics count) are the arrays' sums
            assert x.totals is not None and y.totals is None
            assert x.missing_and_stale() == (x.missing.sum(), x.stale.sum())
            assert x.missing_and_stale() == y.missing_and_stale()
            assert x.missing_and_stale()[0] > 0  # the unknown user's features are missing
            if clock is not None and enforce:
                assert x.stale.sum() > 0  # the far-off clock did expire values


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(width=64) | st.integers(-(2**70), 2**70), max_size=40))
def test_request_doubles_become_float32_or_name_the_first_that_cannot(values):
    """float32s: the cast numpy makes when every value is finite and within float32's range,
    else the index of the first that is not (NaN, infinities, and finite doubles that
    float32 would round to infinity), whatever the numbers."""
    limit = float(np.finfo(np.float32).max) + 2.0**103
    doubles = [float(v) for v in values]
    out = np.full(len(doubles), -1.0, np.float32)
    bad = native.float32s(doubles, out, limit)
    fails = [i for i, v in enumerate(doubles) if not abs(v) < limit]
    assert bad == (fails[0] if fails else -1)
    if not fails:
        np.testing.assert_array_equal(out, np.array(doubles, np.float64).astype(np.float32))
        assert np.isfinite(out).all()


@needs_native
def test_request_doubles_that_are_not_numbers_are_refused():
    out = np.empty(2, np.float32)
    with pytest.raises(TypeError):
        native.float32s([1.0, "x"], out, 1e38)
    with pytest.raises(ValueError):  # an output too small is refused, never overrun
        native.float32s([1.0, 2.0, 3.0], out, 1e38)


def test_a_server_without_the_c_loops_says_so_and_answers_the_same(
    fraud_repo, model_repo, client, servers
):
    """`augur serve` with AUGUR_NATIVE=0 (as on a machine without a compiler) logs that its
    reads run in numpy and its Predicts through protobuf's messages, and answers what the C
    paths answer, features and status included."""
    process = servers.serve(fraud_repo, model_repo, env={**os.environ, "AUGUR_NATIVE": "0"})
    port = process.port
    rng = np.random.default_rng(3)
    entities = {"user_id": rng.integers(0, 450, 60), "merchant_id": rng.integers(0, 90, 60)}
    amounts = {"amount": rng.uniform(1, 500, 60)}
    try:
        with PredictorClient(f"127.0.0.1:{port}", timeout=30) as plain:
            plain.wait_serving(["fraud_lgbm"], 90, process)
            got = plain.predict("fraud_lgbm", entities, amounts, return_features=True)
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    want = client.predict("fraud_lgbm", entities, amounts, return_features=True)
    assert "reads run in numpy" in output
    assert "Predict's requests and answers go through protobuf's messages" in output
    np.testing.assert_array_equal(got.features, want.features)
    np.testing.assert_array_equal(got.scores, want.scores)
    assert got.missing.tolist() == want.missing.tolist() and (want.missing > 0).any()
