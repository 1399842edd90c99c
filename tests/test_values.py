"""The value codec reads and writes exactly Feast's ValueProto and Timestamp bytes."""

import math

import pytest
from feast.protos.feast.types.Value_pb2 import Null, Value
from google.protobuf.timestamp_pb2 import Timestamp

from augur.features.values import decode_number, decode_timestamp, encode_number, encode_timestamp

CASES = [
    ("Int64", "int64_val", [0, 1, 127, 128, 300, -1, -(2**63), 2**63 - 1, 1_700_000_000]),
    ("Int32", "int32_val", [0, 5, -5, 2**31 - 1, -(2**31)]),
    ("Float64", "double_val", [0.0, -0.0, 1.5, -2.25e300, 3.141592653589793, math.inf]),
    ("Float32", "float_val", [0.0, 1.5, -7.25, 2.0**100]),  # exactly representable
    ("Bool", "bool_val", [True, False]),
    ("UnixTimestamp", "unix_timestamp_val", [0, 1_700_000_000]),
]


@pytest.mark.parametrize(("dtype", "field", "values"), CASES)
def test_decodes_what_feast_serializes(dtype, field, values):
    for v in values:
        raw = Value(**{field: v}).SerializeToString()
        assert decode_number(raw) == float(v)


@pytest.mark.parametrize(("dtype", "field", "values"), CASES)
def test_encodes_what_feast_parses(dtype, field, values):
    for v in values:
        parsed = Value()
        parsed.ParseFromString(encode_number(v, dtype))
        assert parsed.WhichOneof("val") == field
        assert getattr(parsed, field) == v


def test_absent_and_null_values_are_nan():
    assert math.isnan(decode_number(None))
    assert math.isnan(decode_number(b""))
    assert math.isnan(decode_number(Value().SerializeToString()))
    assert math.isnan(decode_number(Value(null_val=Null.NULL).SerializeToString()))
    assert math.isnan(decode_number(Value(string_val="x").SerializeToString()))
    assert encode_number(None, "Float64") == b""
    assert encode_number(math.nan, "Float32") == b""


def test_nan_stored_as_double_decodes_to_nan():
    assert math.isnan(decode_number(Value(double_val=math.nan).SerializeToString()))


@pytest.mark.parametrize("seconds", [0, 1, 1_763_000_000, 1_763_000_000.25, 1_763_000_000.999999])
def test_timestamps_match_protobuf(seconds):
    ts = Timestamp(seconds=int(seconds), nanos=round((seconds - int(seconds)) * 1e9))
    assert decode_timestamp(ts.SerializeToString()) == pytest.approx(seconds, abs=1e-9)
    parsed = Timestamp()
    parsed.ParseFromString(encode_timestamp(seconds))
    assert (parsed.seconds, parsed.nanos) == (ts.seconds, ts.nanos)


def test_missing_timestamp_is_nan():
    assert math.isnan(decode_timestamp(None))


def test_column_decoding_equals_value_decoding():
    import numpy as np

    from augur.features.values import decode_column

    rng = np.random.default_rng(3)
    raws = [None, b"", Value().SerializeToString(), Value(string_val="x").SerializeToString()]
    for v in rng.normal(size=50) * 1e6:
        raws.append(Value(double_val=float(v)).SerializeToString())
        raws.append(Value(float_val=float(v)).SerializeToString())
    for v in [0, 1, 127, 128, 300, -1, 2**40, -(2**63), *rng.integers(0, 200, 40).tolist()]:
        raws.append(Value(int64_val=int(v)).SerializeToString())
        raws.append(Value(int32_val=int(max(min(v, 2**31 - 1), -(2**31)))).SerializeToString())
    raws += [Value(bool_val=b).SerializeToString() for b in (True, False)]
    raws += [Value(double_val=math.nan).SerializeToString()]
    order = rng.permutation(len(raws))
    shuffled = [raws[i] for i in order]
    expected = np.array([decode_number(r) for r in shuffled], np.float32)
    np.testing.assert_array_equal(decode_column(shuffled), expected)  # NaN == NaN here
    assert decode_column([]).shape == (0,)


@pytest.mark.parametrize(("dtype", "field", "values"), CASES)
def test_column_encoding_is_per_value_encoding(dtype, field, values):
    import numpy as np

    from augur.features.values import encode_column

    array = np.array(values, object if dtype != "Bool" else bool)
    array = array.astype(np.float64 if dtype.startswith("Float") else np.int64)
    present = np.ones(len(values), bool)
    present[::3] = False  # nulls in between
    got = encode_column(array, present, dtype).rows()
    assert got == [
        encode_number(v, dtype) if p else b"" for v, p in zip(values, present, strict=True)
    ]


def test_timestamp_column_encoding_is_exactly_protobufs():
    import numpy as np

    from augur.features.values import encode_timestamps, timestamp_parts

    seconds = np.array([0, 1, 1_700_000_000, 1_700_000_000, 2**40])
    nanos = np.array([0, 999_999_999, 0, 123_456_000, 1])
    for raw, s, n in zip(encode_timestamps(seconds, nanos).rows(), seconds, nanos, strict=True):
        assert raw == Timestamp(seconds=int(s), nanos=int(n)).SerializeToString()
        assert timestamp_parts(raw) == (s, n)
