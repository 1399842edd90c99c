"""MLServer alone, a baseline of the harness: Seldon MLServer (bench/mlserver.py) serving the
scenario's own LightGBM file, each request carrying its rows' features (no feature read), so
that Augur's Predict, which reads its features, is compared with the model server by itself.

The features are the ones Augur assembles for the same pooled requests (fetched once, before
any load, with Predict's `return_features`), float32 in the model's input order; MLServer's
scores on them are checked against Augur's before the run goes on. Not Augur code.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np

from augur.api.oip import open_inference_pb2 as oip
from augur.api.oip import open_inference_pb2_grpc as oip_grpc
from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from bench.compare import AUGUR, MLSERVER, paired
from bench.load import CHANNEL_OPTIONS, request
from bench.mlserver import MLServer, MLServerUnavailable, mlserver_bin

if TYPE_CHECKING:  # the load generator imports this module: it needs no scenario code
    from bench.scenarios import Scenario
    from bench.targets import ServerProcess

SCORE_TOLERANCE = 1e-4  # lleaves and LightGBM's predict differ in float rounding only


def unavailable() -> str | None:
    """Why MLServer cannot run here (its virtualenv cannot be built), in one line; None when
    it can. Builds the virtualenv on first use (minutes, then cached)."""
    try:
        mlserver_bin()
    except MLServerUnavailable as e:
        return str(e)
    return None


def start(scenario: Scenario, work: Path) -> ServerProcess:
    """MLServer serving the scenario's published model file, ready to answer ModelInfer."""
    from augur.modelrepo.repository import ModelRepository
    from bench.targets import ServerProcess

    began = time.perf_counter()
    version = ModelRepository(scenario.model_repo).resolve(scenario.model)
    server = MLServer(work / MLSERVER, scenario.model, version.artifact).start()
    process = ServerProcess(MLSERVER, server.process, server.address, server.log)
    process.ready_s = time.perf_counter() - began
    process.rss_ready_mb = process.rss_mb()
    return process


def feature_pools(augur: str, mlserver: str, model: str, pools: dict[int, list]) -> dict:
    """For the load generator (bench/load.py): each pooled request's features as Augur
    assembles them for its model, {rows: [{"shape", "fp32": base64 of float32 bytes}]},
    after checking that MLServer scores the first of each size as Augur does."""
    out: dict[str, list] = {}
    with grpc.insecure_channel(augur, CHANNEL_OPTIONS) as a, grpc.insecure_channel(mlserver) as m:
        predict = pb_grpc.PredictorStub(a).Predict
        infer = oip_grpc.GRPCInferenceServiceStub(m).ModelInfer
        for rows, raws in pools.items():
            out[str(rows)] = []
            for raw in raws:
                req = request(model, raw)
                req.options.return_features = True
                answer = predict(req, timeout=30)
                batch = np.asarray(answer.features.values, np.float32).reshape(rows, -1)
                encoded = base64.b64encode(batch.tobytes()).decode()
                out[str(rows)].append({"shape": list(batch.shape), "fp32": encoded})
                if len(out[str(rows)]) == 1:
                    got = infer(infer_request(model, out[str(rows)][0]), timeout=30)
                    _check_scores(np.asarray(answer.scores, np.float64), got)
    return out


def infer_request(model: str, features: dict) -> oip.ModelInferRequest:
    """An OIP ModelInferRequest carrying one request's features as one FP32 tensor."""
    tensor = oip.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP32", shape=features["shape"]
    )
    raw = base64.b64decode(features["fp32"])
    return oip.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[raw])


def _check_scores(augur: np.ndarray, answer: oip.ModelInferResponse) -> None:
    """MLServer must be serving the same model: its scores equal Augur's on the same rows."""
    output = answer.outputs[0]
    if answer.raw_output_contents:
        dtype = {"FP32": np.float32, "FP64": np.float64}[output.datatype]
        scores = np.frombuffer(answer.raw_output_contents[0], dtype)
    else:
        contents = output.contents
        scores = np.asarray(contents.fp64_contents or contents.fp32_contents, np.float64)
    if scores.size != augur.size or not np.allclose(scores, augur, atol=SCORE_TOLERANCE):
        raise RuntimeError(
            f"MLServer's scores differ from Augur's on the same features: {scores[:4]} vs "
            f"{augur[:4]}; the baseline would not be serving the same model"
        )


def report_lines(result: dict, turns: str) -> list[str]:
    """The report's table (bench/report.py): Augur's Predict, which reads its features,
    against MLServer fed them, at each paired point (`turns`: how they took turns); or the
    one line saying why MLServer was not run."""
    why = (result.get("skipped") or {}).get(MLSERVER)
    if why:
        return ["", f"MLServer alone: not measured in this run ({why})."]
    steps = paired(result, MLSERVER)
    if not steps:
        return []
    lines = [
        "",
        "### Augur against MLServer alone (closed loop, paired)",
        "",
        "MLServer 1.7.1 + mlserver-lightgbm in one process (`parallel_workers: 0`), serving the "
        "same LightGBM file through LightGBM's predict; each OIP ModelInfer carries the rows' "
        "features (as Augur assembled them) as one FP32 tensor, so MLServer reads nothing. "
        f"They took turns at each point ({turns}). Client CPU: the load generator's per call, "
        "the same order for both protocols (bench/load.py says how).",
        "",
        "| rows | callers | Augur predictions/s, p50 / p99 ms | MLServer predictions/s, p50 / "
        "p99 ms | predictions/s vs MLServer | p50 speedup | client CPU ms (Augur / MLServer) "
        "| not OK |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in result["ratios"]["mlserver"]:
        pair = steps[(p["rows"], p["concurrency"])]
        cells = [str(p["rows"]), str(p["concurrency"])]
        cells += [_point(pair.get(AUGUR, {})), _point(pair.get(MLSERVER, {}))]
        cells += [_times(p["rows_per_s_vs_mlserver"]), _times(p["p50_speedup_vs_mlserver"])]
        cpu = [pair.get(t, {}).get("client_cpu_ms_per_req") for t in (AUGUR, MLSERVER)]
        cells.append(" / ".join("-" if c is None else f"{c:.3f}" for c in cpu))
        bad = [f"{t}: {s['errors']}" for t, s in pair.items() if s.get("errors")]
        cells.append("; ".join(bad) or "-")  # closed loop: nothing is dropped
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _point(step: dict) -> str:
    if "p50_ms" not in step:
        return "-"
    return f"{step['rows_per_s']:,.0f}, {step['p50_ms']:.2f} / {step['p99_ms']:.2f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:g}x"
