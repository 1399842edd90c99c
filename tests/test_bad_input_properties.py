"""Malformed requests of every shape get a precise status, never a crash, hang or dead server.

Hypothesis builds Predict and GetOnlineFeatures requests (unknown or look-alike names, wrong
types, ragged or empty columns, row counts around `server.max_rows`, NaN, inf and values
beyond float32, huge strings, garbage bytes) and sends them over a real gRPC channel. An
oracle written from the API contract (README, "The API") says what each one must get: an
answer only when the request is valid; otherwise INVALID_ARGUMENT whose details start with
the offending field path, NOT_FOUND for an unknown model, version or feature service, and
RESOURCE_EXHAUSTED above the gRPC message limit. Never UNKNOWN, and INTERNAL only where
gRPC itself refuses bytes that are no PredictRequest at all. Afterwards the server still
gives a fixed request exactly the answer it gave before the fuzzing began.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from augur.api.v1 import predictor_pb2 as pb
from augur.config import ServerConfig
from augur.features.plan import ReadPlan
from augur.features.repo import build_plans
from augur.modelrepo.repository import ModelRepository
from tests.conftest import MAX_ROWS

TIMEOUT = 5.0  # per call: a hang shows up as DEADLINE_EXCEEDED, which no oracle accepts
MAX_MESSAGE = ServerConfig().max_message_bytes  # the server fixture keeps the default
SHOWN = 64  # a long caller-chosen name may be shortened, but to no less than its start
MAX_DETAILS = 2_000  # details travel in a trailer; gRPC clients drop trailers over 8 KiB

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
TOO_LARGE = grpc.StatusCode.RESOURCE_EXHAUSTED

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is reproducible
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# --- what the server serves ------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """One model as ListModels describes it, with its read plan."""

    version: str
    names: frozenset[str]  # what `version` may say: "", the version, and its aliases
    plan: ReadPlan
    request_features: tuple[str, ...]
    inputs: tuple[str, ...]  # model inputs in order


@dataclass(frozen=True)
class Contract:
    models: dict[str, Served]
    services: dict[str, ReadPlan]


@pytest.fixture(scope="module")
def contract(client, fraud_repo, model_repo) -> Contract:
    plans = build_plans(fraud_repo.store)
    repo = ModelRepository(model_repo)
    models = {}
    for m in client.stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models:
        aliases = {a for a, v in repo.spec(m.name).aliases.items() if v == m.version}
        models[m.name] = Served(
            m.version,
            frozenset({"", m.version, *aliases}),
            plans[m.feature_service],
            tuple(m.request_features),
            tuple(m.features),
        )
    assert models, "the server fixture serves no model"
    # Services with on-demand views also need each row's request data, and their outputs
    # depend on it: their contract is tests/test_odfv.py's and tests/test_feast_template.py's.
    plain = {name: plan for name, plan in plans.items() if not plan.request_fields}
    assert len(plain) < len(plans), "the fraud repo's on-demand view is not in the registry"
    return Contract(models, plain)


def _fixed_calls(client, contract: Contract) -> list[bytes]:
    """One valid request per model and per feature service, with repeated and unknown rows."""
    users, merchants = [1, 2, 3, 2, 123_456], [3, 4, 5, 4, 3]
    entities = {
        "user_id": pb.EntityColumn(int64s=pb.Int64List(values=users)),
        "merchant_id": pb.EntityColumn(int64s=pb.Int64List(values=merchants)),
    }
    amounts = [5.0, 12.5, 980.0, 12.5, 99.5]
    answers = []
    for name, served in sorted(contract.models.items()):
        request = pb.PredictRequest(
            model=name,
            entities=entities,
            request_features={f: pb.DoubleList(values=amounts) for f in served.request_features},
            options=pb.PredictOptions(return_features=True, return_feature_status=True),
        )
        answers.append(client.stub.Predict(request, timeout=TIMEOUT))
    for service in sorted(contract.services):
        request = pb.GetOnlineFeaturesRequest(feature_service=service, entities=entities)
        answers.append(client.stub.GetOnlineFeatures(request, timeout=TIMEOUT))
    # Bytes, not messages: missing features are NaN, and NaN != NaN.
    return [a.SerializeToString(deterministic=True) for a in answers]


@pytest.fixture(scope="module", autouse=True)
def before_fuzzing(client, contract) -> list[bytes]:
    return _fixed_calls(client, contract)


# --- strategies --------------------------------------------------------------------------
#
# Hypothesis draws the text of names and a seed; the seed picks the request's shape (which
# fields to break, how many rows) with fixed weights. Left to Hypothesis, those choices
# came out in runs of near-copies that favoured the first branch, and only one request in
# thirty was valid.

# Protobuf strings are UTF-8, so no lone surrogates; everything else goes.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
PIECES = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=3)
SEEDS = st.integers(0, 2**32 - 1).map(np.random.default_rng)
NON_FINITE = [float("nan"), float("inf"), float("-inf"), -float("nan")]
OVERFLOW = [1e39, -1e39, 1e308, -1.7976931348623157e308, 3.4028235677973366e38]
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_EDGES = [FLOAT32_MAX, -FLOAT32_MAX, 3.4028235e38, 1e-45, 5e-324, -0.0, 0.0]
INT64 = np.iinfo(np.int64)


def _pick(rng: np.random.Generator, **weights: float) -> str:
    labels, p = list(weights), np.array(list(weights.values()), float)
    return labels[rng.choice(len(labels), p=p / p.sum())]


def _lookalikes(names) -> list[str]:
    out = ["", "."]
    for name in sorted(names):
        wide = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in name)
        out += [name.upper(), f"{name} ", f" {name}", f"{name}\x00", f"{name}\u200b", wide]
        out += [name.replace("_", "-"), f"{name}s", name[:-1], f"{name}.{name}"]
    return out


def _name(draw, rng, known, *, right: float, longest: int) -> str:
    """A name a caller might send: right, nearly right, random text, or long."""
    kind = _pick(rng, right=right, lookalike=2, text=1, long=1, empty=0.5)
    if kind == "empty":
        return ""
    if kind == "right":
        return str(rng.choice(sorted(known)))
    if kind == "lookalike":
        return str(rng.choice(_lookalikes(known)))
    if kind == "text":
        return draw(TEXT)
    return draw(PIECES) * int(rng.integers(SHOWN // 3, longest))


def _row_count(rng) -> int:
    kind = _pick(rng, few=6, zero=1, limit=2)
    if kind == "few":
        return int(rng.integers(1, 41))
    return 0 if kind == "zero" else int(rng.choice([MAX_ROWS - 1, MAX_ROWS, MAX_ROWS + 1]))


def _column(draw, rng, kind: str, length: int) -> pb.EntityColumn:
    if kind == "int64":
        style = _pick(rng, known=3, any=1, edges=1, repeated=1)
        if style == "known":  # ids the generated data has, and some it has not
            values = rng.integers(0, 500, length)
        elif style == "any":
            values = rng.integers(INT64.min, INT64.max, length, endpoint=True)
        elif style == "edges":
            values = rng.choice(np.array([INT64.min, -1, 0, 1, INT64.max], np.int64), length)
        else:
            values = np.full(length, rng.integers(0, 500))
        return pb.EntityColumn(int64s=pb.Int64List(values=values.tolist()))
    style = _pick(rng, digits=1, text=1, huge=1)
    if style == "text":
        values = [draw(TEXT)] * length
    else:
        values = [str(v) for v in rng.integers(0, 500, length)]
        if style == "huge" and length:
            values[rng.integers(length)] = "x" * int(rng.integers(10_000, 2_000_000))
    return pb.EntityColumn(strings=pb.StringList(values=values))


def _entities(draw, rng, types: Mapping[str, str]) -> dict[str, pb.EntityColumn]:
    n = _row_count(rng)
    columns = {}
    for name, kind in sorted(types.items()):
        shape = _pick(rng, right=24, missing=1, unset=1, wrong_type=1, ragged=1, empty=1)
        if shape == "missing":
            continue
        if shape == "unset":  # the oneof holds neither list
            columns[name] = pb.EntityColumn()
            continue
        if shape == "wrong_type":
            kind = "string" if kind == "int64" else "int64"
        length = {"ragged": int(rng.choice([n + 1, max(n - 1, 0), 1, MAX_ROWS + 1])), "empty": 0}
        columns[name] = _column(draw, rng, kind, length.get(shape, n))
    extra = int(rng.choice([0, 1, 2], p=[0.8, 0.15, 0.05]))
    for _ in range(extra):  # extra keys: look-alikes, random, long, or a known one again
        name = _name(draw, rng, types, right=1, longest=4_000)
        columns[name] = _column(draw, rng, str(rng.choice(["int64", "string"])), n)
    return columns


def _rows(columns: Mapping[str, pb.EntityColumn]) -> int:
    lengths = [len(getattr(c, c.WhichOneof("values") or "int64s").values) for c in columns.values()]
    return max(lengths, default=0)


def _request_features(draw, rng, wanted: tuple[str, ...], n: int) -> dict[str, pb.DoubleList]:
    columns = {}
    for name in wanted:
        shape = _pick(rng, right=14, missing=1, ragged=1, non_finite=1, overflow=1, edges=1)
        if shape == "missing":
            continue
        length = int(rng.choice([n + 1, max(n - 1, 0), 0, 2 * n + 1])) if shape == "ragged" else n
        values = np.round(rng.lognormal(3.0, 1.5, length), 2)
        special = {"non_finite": NON_FINITE, "overflow": OVERFLOW, "edges": FLOAT32_EDGES}
        if shape in special and length:
            at = rng.integers(0, length, rng.integers(1, 4))
            values[at] = rng.choice(special[shape], len(at))
        columns[name] = pb.DoubleList(values=values.tolist())
    extra = int(rng.choice([0, 1, 2], p=[0.85, 0.1, 0.05]))
    for _ in range(extra):
        name = _name(draw, rng, [*wanted, "tip", "amount_usd"], right=1, longest=4_000)
        columns[name] = pb.DoubleList(values=[1.0] * int(rng.choice([n, 0, 1])))
    return columns


@st.composite
def _predict_requests(draw, contract: Contract) -> pb.PredictRequest:
    rng = draw(SEEDS)
    # Names past a few KiB are left out here: see test_long_unknown_name_is_not_found.
    model = _name(draw, rng, contract.models, right=16, longest=100)
    served = contract.models.get(model) or next(iter(contract.models.values()))
    kind = _pick(rng, default=12, served=4, near=1, text=1)
    near = ["v0", "v2", "V1", f"{served.version} ", "stable", "Stable", "latest", "canary", "1"]
    served_names = sorted(served.names - {""})
    version = {
        "default": "",
        "served": str(rng.choice(served_names)),
        "near": str(rng.choice(near)),
    }.get(kind)
    entities = _entities(draw, rng, served.plan.entity_types)
    return pb.PredictRequest(
        model=model,
        version=draw(TEXT) if version is None else version,
        entities=entities,
        request_features=_request_features(draw, rng, served.request_features, _rows(entities)),
        options=pb.PredictOptions(
            return_features=bool(rng.integers(2)), return_feature_status=bool(rng.integers(2))
        ),
    )


@st.composite
def _online_requests(draw, contract: Contract) -> pb.GetOnlineFeaturesRequest:
    rng = draw(SEEDS)
    service = _name(draw, rng, contract.services, right=16, longest=100)
    plan = contract.services.get(service) or next(iter(contract.services.values()))
    return pb.GetOnlineFeaturesRequest(
        feature_service=service, entities=_entities(draw, rng, plan.entity_types)
    )


# --- the oracle: what the contract says a request must get -------------------------------


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    paths: tuple[str, ...]  # the details must start with one of these field paths


def _entity_problems(
    columns: Mapping[str, pb.EntityColumn], types: Mapping[str, str]
) -> tuple[list[str], int]:
    """Paths of the offending entity fields (any of which may be reported), and the rows."""
    if not columns:
        return ["entities"], 0
    bad = [f"entities.{name}" for name in columns if name not in types]
    bad += [f"entities.{name}" for name in types if name not in columns]
    lengths = {}
    for name in sorted(set(types) & set(columns)):
        which = columns[name].WhichOneof("values")
        if which != ("int64s" if types[name] == "int64" else "strings"):
            bad.append(f"entities.{name}")
        lengths[name] = len(getattr(columns[name], which).values) if which else 0
    if len(set(lengths.values())) > 1:
        bad += [f"entities.{name}" for name in lengths]
    if bad:
        return bad, 0
    n = next(iter(lengths.values()))
    if n == 0 or n > MAX_ROWS:
        return [f"entities.{name}" for name in types], n
    return [], n


def _feature_problems(
    columns: Mapping[str, pb.DoubleList], wanted: tuple[str, ...], n: int
) -> list[str]:
    bad = [f"request_features.{name}" for name in columns if name not in wanted]
    for name in wanted:
        if name not in columns or len(columns[name].values) != n:
            bad.append(f"request_features.{name}")
            continue
        # What the model sees is float32: it must be a finite number there.
        with np.errstate(over="ignore"):
            seen = np.asarray(columns[name].values, np.float64).astype(np.float32)
        bad += [f"request_features.{name}[{i}]" for i in np.flatnonzero(~np.isfinite(seen))]
    return bad


def _expected_predict(
    request: pb.PredictRequest, contract: Contract, size: int | None = None
) -> Refusal | None:
    if (request.ByteSize() if size is None else size) > MAX_MESSAGE:
        return Refusal(TOO_LARGE, ())
    if not request.model:
        return Refusal(INVALID, ("model",))
    served = contract.models.get(request.model)
    if served is None or request.version not in served.names:
        return Refusal(NOT_FOUND, ("model",))
    bad, n = _entity_problems(request.entities, served.plan.entity_types)
    if not bad:
        bad = _feature_problems(request.request_features, served.request_features, n)
    return Refusal(INVALID, tuple(bad)) if bad else None


def _expected_online(request: pb.GetOnlineFeaturesRequest, contract: Contract) -> Refusal | None:
    if request.ByteSize() > MAX_MESSAGE:
        return Refusal(TOO_LARGE, ())
    plan = contract.services.get(request.feature_service)
    if plan is None:
        return Refusal(NOT_FOUND, ("feature service",))
    bad, _ = _entity_problems(request.entities, plan.entity_types)
    return Refusal(INVALID, tuple(bad)) if bad else None


def _names_field(details: str, path: str, code: grpc.StatusCode) -> bool:
    """Whether `details` starts with `path`: whole, or a long caller-chosen name by its start."""
    head, _, name = path.partition(".")
    if len(name) > SHOWN:
        return details.startswith(f"{head}.{name[:SHOWN]}")
    return details.startswith(path + (" " if code == NOT_FOUND else ":"))


def _call(method: Callable, request) -> tuple[grpc.StatusCode, str, object]:
    try:
        return OK, "", method(request, timeout=TIMEOUT)
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None


def _assert_outcome(
    code: grpc.StatusCode, details: str, expected: Refusal | None, *, in_property: bool = True
) -> None:
    if in_property:  # --hypothesis-show-statistics: how often each outcome was exercised
        event(
            f"{code.name} {expected.paths[0].split('.')[0] if expected and expected.paths else ''}"
        )
    if expected is None:
        assert code == OK, f"a valid request was refused: {code.name}: {details[:300]!r}"
        return
    paths = [p[:100] for p in expected.paths[:5]]
    assert code == expected.code, (
        f"got {code.name}: {details[:300]!r}; expected {expected.code.name} naming one of {paths}"
    )
    assert len(details) <= MAX_DETAILS, f"{len(details)} characters of details: {details[:300]!r}"
    if code == TOO_LARGE:
        assert "larger than max" in details, details
    else:
        assert any(_names_field(details, p, code) for p in expected.paths), (
            f"{details[:300]!r} names none of {paths}"
        )


def _values(column: pb.EntityColumn):
    return getattr(column, column.WhichOneof("values")).values


def _assert_same_rows_same_outputs(keys: list[tuple], outputs: np.ndarray, exact: bool) -> None:
    first: dict[tuple, np.ndarray] = {}
    for key, row in zip(keys, outputs, strict=True):
        seen = first.setdefault(key, row)
        if exact:  # NaN (a missing feature) equals NaN here
            assert seen.tobytes() == row.tobytes(), f"row {key}: {seen} then {row}"
        else:  # a batched matmul may round a row differently by where it sits
            np.testing.assert_allclose(row, seen, rtol=1e-6, atol=1e-7, err_msg=str(key))


def _assert_predicted(request: pb.PredictRequest, reply: pb.PredictResponse, contract) -> None:
    served = contract.models[request.model]
    n = _rows(request.entities)
    assert (reply.model, reply.rows) == (request.model, n)
    assert reply.version == served.version and not reply.row_versions
    assert reply.outputs >= 1 and len(reply.scores) == n * reply.outputs
    scores = np.asarray(reply.scores, np.float32).reshape(n, reply.outputs)
    assert np.isfinite(scores).all(), "finite inputs gave non-finite scores"

    options = request.options
    status = reply.feature_status
    assert len(status) == (n if options.return_feature_status else 0)
    stored = len(served.plan.columns)
    assert all(s.present + s.missing == stored and 0 <= s.stale <= s.missing for s in status)
    if options.return_features:
        assert tuple(reply.features.names) == served.inputs
        features = np.asarray(reply.features.values, np.float32).reshape(n, len(served.inputs))
        for name in served.request_features:
            sent = np.asarray(request.request_features[name].values, np.float32)
            assert (features[:, served.inputs.index(name)] == sent).all()
    else:
        assert not reply.features.names and not reply.features.values

    # The same entity and request-time values give the same scores, wherever the row sits.
    columns = [_values(c) for c in request.entities.values()]
    columns += [c.values for c in request.request_features.values()]
    _assert_same_rows_same_outputs(list(zip(*columns, strict=True)), scores, exact=False)


def _assert_read(request, reply: pb.GetOnlineFeaturesResponse, contract) -> None:
    plan = contract.services[request.feature_service]
    n = _rows(request.entities)
    assert tuple(reply.features.names) == plan.feature_names
    width = len(plan.feature_names)
    assert len(reply.features.values) == n * width and len(reply.feature_status) == n
    assert all(s.present + s.missing == width for s in reply.feature_status)
    values = np.asarray(reply.features.values, np.float32).reshape(n, width)
    keys = list(zip(*(_values(c) for c in request.entities.values()), strict=True))
    _assert_same_rows_same_outputs(keys, values, exact=True)


# --- the properties ----------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_predict_answers_only_valid_requests(client, contract, data):
    request = data.draw(_predict_requests(contract), label="request")
    expected = _expected_predict(request, contract)
    code, details, reply = _call(client.stub.Predict, request)
    _assert_outcome(code, details, expected)
    if reply is not None:
        _assert_predicted(request, reply, contract)


@FUZZ
@given(data=st.data())
def test_get_online_features_answers_only_valid_requests(client, contract, data):
    request = data.draw(_online_requests(contract), label="request")
    expected = _expected_online(request, contract)
    code, details, reply = _call(client.stub.GetOnlineFeatures, request)
    _assert_outcome(code, details, expected)
    if reply is not None:
        _assert_read(request, reply, contract)


@st.composite
def _bodies(draw, contract: Contract) -> bytes:
    """Bytes on the wire: random, a valid request damaged, or requests concatenated (which
    protobuf reads as one message with repeated fields: later map entries win)."""
    kind = draw(st.sampled_from(["random", "damaged", "truncated", "concatenated"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    body = draw(_predict_requests(contract)).SerializeToString()
    if kind == "concatenated":
        return body + draw(_predict_requests(contract)).SerializeToString()
    if kind == "truncated" or not body:
        return body[: draw(st.integers(0, len(body)))]
    damaged = bytearray(body)
    for _ in range(draw(st.integers(1, 8))):
        damaged[draw(st.integers(0, len(damaged) - 1))] = draw(st.integers(0, 255))
    return bytes(damaged)


@FUZZ
@given(data=st.data())
def test_raw_bytes_get_the_status_of_what_they_parse_to(client, contract, data):
    body = data.draw(_bodies(contract), label="body")
    predict = client.channel.unary_unary(
        "/augur.v1.Predictor/Predict",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    code, details, reply = _call(predict, body)
    try:
        request = pb.PredictRequest.FromString(body)
    except DecodeError:
        event("not a PredictRequest")
        # Not a PredictRequest: gRPC refuses it before the servicer runs. INTERNAL here is
        # gRPC's own "Exception deserializing request!", not a failure inside Augur.
        assert code in (INVALID, grpc.StatusCode.INTERNAL), f"{code.name}: {details!r}"
        assert code == INVALID or details == "Exception deserializing request!", details
        return
    _assert_outcome(code, details, _expected_predict(request, contract, size=len(body)))
    if reply is not None:
        _assert_predicted(request, pb.PredictResponse.FromString(reply), contract)


def _padded(request, column: str, size: int):
    """`request` with a strings column whose one value brings it to exactly `size` bytes."""
    padding = size - request.ByteSize()
    for _ in range(4):  # the length prefixes grow with the padding; converges in a few steps
        request.entities[column].strings.values[:] = ["x" * padding]
        padding += size - request.ByteSize()
    assert request.ByteSize() == size
    return request


@pytest.mark.parametrize("method", ["Predict", "GetOnlineFeatures"])
@pytest.mark.parametrize(
    ("size", "code"), [(MAX_MESSAGE, INVALID), (MAX_MESSAGE + 1, TOO_LARGE)], ids=["at", "over"]
)
def test_message_size_limit(client, method, size, code):
    """At the limit the request is read and refused by field; one byte over, by gRPC."""
    user = {"user_id": pb.EntityColumn(int64s=pb.Int64List(values=[1]))}
    if method == "Predict":
        request = pb.PredictRequest(model="fraud_lgbm", entities=user)
    else:
        request = pb.GetOnlineFeaturesRequest(feature_service="fraud_lgbm", entities=user)
    request = _padded(request, "merchant_id", size)
    got, details, _ = _call(getattr(client.stub, method), request)
    assert got == code, f"{got.name}: {details[:300]!r}"
    expected = "entities.merchant_id: expected int64s" if code == INVALID else "larger than max"
    assert expected in details, details


@pytest.mark.parametrize(
    "field",
    ["model", "version", "feature service"],
)
def test_long_unknown_name_is_not_found(client, contract, field):
    name = "é" * 20_000  # 40 KB of UTF-8, 120 KB percent-encoded in a trailer
    model = sorted(contract.models)[0]
    entities = {
        key: pb.EntityColumn(int64s=pb.Int64List(values=[1]))
        for key in contract.models[model].plan.entity_types
    }
    if field == "feature service":
        request = pb.GetOnlineFeaturesRequest(feature_service=name, entities=entities)
        code, details, _ = _call(client.stub.GetOnlineFeatures, request)
    else:
        request = pb.PredictRequest(
            model=name if field == "model" else model,
            version=name if field == "version" else "",
            entities=entities,
        )
        code, details, _ = _call(client.stub.Predict, request)
    prefix = "feature service" if field == "feature service" else "model"
    _assert_outcome(code, details, Refusal(NOT_FOUND, (prefix,)), in_property=False)


def test_answers_are_unchanged_after_the_fuzzing(client, contract, before_fuzzing):
    assert _fixed_calls(client, contract) == before_fuzzing
