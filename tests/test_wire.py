"""augur.serving._wire, a Predict's request read and its answer written in C: what it reads
is what protobuf parses, what it leaves to protobuf is anything else, and what it writes is
the bytes protobuf writes. That a server answers through it as through the messages is
tests/test_native.py's AUGUR_NATIVE=0 test (and every Predict test, which runs through it);
that it is built where a compiler is, tests/test_native.py's too.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from augur.api.v1 import predictor_pb2 as pb
from augur.serving.codec import decode_entities, decode_request_features, predict_response
from augur.serving.wire import Options, parse_predict, wire

needs_wire = pytest.mark.skipif(wire is None, reason="augur.serving._wire is not built")

names = st.text(min_size=0, max_size=8)
int64s = st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6)
strings = st.lists(st.text(max_size=6), max_size=6)
doubles = st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=6)


@st.composite
def requests(draw) -> pb.PredictRequest:
    request = pb.PredictRequest(model=draw(names), version=draw(names))
    for name in draw(st.lists(names, max_size=3, unique=True)):
        kind = draw(st.sampled_from(["int64s", "strings", None]))
        column = request.entities[name]
        if kind == "int64s":
            column.int64s.values.extend(draw(int64s))
        elif kind == "strings":
            column.strings.values.extend(draw(strings))
    for name in draw(st.lists(names, max_size=3, unique=True)):
        request.request_features[name].values.extend(draw(doubles))
    if draw(st.booleans()):
        request.options.return_features = draw(st.booleans())
        request.options.return_feature_status = draw(st.booleans())
    return request


def _as_message_reads(request: pb.PredictRequest) -> tuple:
    """What the codec takes from the message: the same shape parse_predict gives."""
    entities = {}
    for name, column in request.entities.items():
        which = column.WhichOneof("values")
        entities[name] = (which, None if which is None else list(getattr(column, which).values))
    features = {name: list(c.values) for name, c in request.request_features.items()}
    options = Options(request.options.return_features, request.options.return_feature_status)
    return request.model, request.version, entities, features, options


def _reads(got) -> tuple:
    return got.model, got.version, got.entities, got.request_features, got.options


def _same(a: tuple, b: tuple) -> bool:
    """Equal, maps in any order, NaN equal to NaN (repr writes every float exactly)."""

    def canonical(reads: tuple) -> str:
        model, version, entities, features, options = reads
        return repr((model, version, sorted(entities.items()), sorted(features.items()), options))

    return canonical(a) == canonical(b)


@needs_wire
@settings(max_examples=300, deadline=None)
@given(requests())
def test_a_request_reads_as_protobuf_parses_it(request):
    got = parse_predict(request.SerializeToString())
    assert got is not None  # protobuf's own encoding is the one this reader takes
    parsed = pb.PredictRequest.FromString(request.SerializeToString())
    assert _same(_reads(got), _as_message_reads(parsed))


@needs_wire
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_read_as_protobuf_parses_them_or_are_left_to_it(raw):
    got = parse_predict(raw)
    if got is None:
        return  # protobuf's to read or refuse
    try:
        parsed = pb.PredictRequest.FromString(raw)
    except DecodeError:
        pytest.fail(f"read {raw!r}, which protobuf refuses")
    assert _same(_reads(got), _as_message_reads(parsed))


@needs_wire
@settings(max_examples=200, deadline=None)
@given(requests(), st.binary(min_size=1, max_size=12))
def test_bytes_cut_short_or_with_a_tail_are_never_misread(request, tail):
    raw = request.SerializeToString()
    for variant in (raw[: len(raw) // 2], raw + tail):
        got = parse_predict(variant)
        if got is None:
            continue
        parsed = pb.PredictRequest.FromString(variant)  # read: so protobuf must parse it
        assert _same(_reads(got), _as_message_reads(parsed))


@needs_wire
@pytest.mark.parametrize(
    "raw, why",
    [
        (bytes.fromhex("1a0d0a017512080a06080108020803"), "int64s not packed"),
        (bytes.fromhex("1a070a017512020a001a070a017512020a00"), "a key given twice"),
        (bytes.fromhex("0a01660a0167"), "a field given twice"),
        (bytes.fromhex("0a01663001"), "an unknown field"),
        (bytes.fromhex("0a02c328"), "a string that is not UTF-8"),
        (bytes.fromhex("2a0208012a021001"), "options given twice (protobuf merges them)"),
    ],
)
def test_encodings_other_than_protobufs_own_are_left_to_protobuf(raw, why):
    assert parse_predict(raw) is None, why


@needs_wire
def test_the_codec_decodes_a_wire_request_as_the_message():
    request = pb.PredictRequest(model="m")
    request.entities["user_id"].int64s.values.extend([3, 1, 2])
    request.request_features["amount"].values.extend([1.5, 2.5, 1e300])
    raw = request.SerializeToString()
    got, parsed = parse_predict(raw), pb.PredictRequest.FromString(raw)

    plan = SimpleNamespace(entity_types={"user_id": "int64"})  # all decode_entities reads

    for read in (got, parsed):
        entities, n = decode_entities(read.entities, plan, 10, "model m")
        assert entities == {"user_id": [3, 1, 2]} and n == 3
        with pytest.raises(Exception, match=r"request_features.amount\[2\]: 1e\+300 is beyond"):
            decode_request_features(read.request_features, ["amount"], 3, "model m")
    strings = pb.PredictRequest()
    strings.entities["user_id"].strings.values.append("3")
    for read in (parse_predict(strings.SerializeToString()), strings):
        with pytest.raises(Exception, match=r"entities\.user_id: expected int64s, got strings"):
            decode_entities(read.entities, plan, 10, "model m")


@needs_wire
@settings(max_examples=300, deadline=None)
@given(
    names,
    names,
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**31 - 1),
    st.lists(st.floats(width=64), max_size=8),
    st.sampled_from([np.float32, np.float64]),
    st.booleans(),
)
def test_an_answer_is_the_bytes_protobuf_writes(model, version, rows, outputs, scores, dtype, bad):
    array = np.array(scores, dtype)
    with np.errstate(over="ignore"):
        want = pb.PredictResponse(
            model=model,
            version=version,
            rows=rows,
            outputs=outputs,
            scores=array.tolist(),
            degraded=bad,
        ).SerializeToString()
    assert wire.predict_response(model, version, rows, outputs, array, bad) == want


@needs_wire
def test_an_answer_refuses_what_it_cannot_write():
    with pytest.raises(TypeError):
        wire.predict_response("m", "v", 1, 1, np.array([1], np.int64), False)
    with pytest.raises(ValueError):
        wire.predict_response("m", "v", -1, 1, np.zeros(1, np.float32), False)
    with pytest.raises((ValueError, BufferError)):  # not C-contiguous
        wire.predict_response("m", "v", 2, 1, np.zeros((2, 2), np.float32)[:, 0], False)


@needs_wire
@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", ">f8", "<f2"])
def test_the_codec_writes_in_c_only_what_c_writes_as_protobuf_would(dtype):
    """Native float32/float64 scores go out as bytes; any other array as the message (the C
    writer takes native floats only), and both read back as the same answer."""
    scores = np.array([[0.25], [0.5]], dtype)
    scored = SimpleNamespace(scores=scores, batch=np.zeros((2, 3)), degraded=False, rows=None)
    got = predict_response("m", Options(), scored, ["v1"])
    assert isinstance(got, bytes) == (dtype in ("<f4", "<f8"))
    message = pb.PredictResponse.FromString(got) if isinstance(got, bytes) else got
    assert (message.model, message.version, message.rows, message.outputs) == ("m", "v1", 2, 1)
    assert list(message.scores) == [0.25, 0.5]
