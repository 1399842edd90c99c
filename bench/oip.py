"""The Open Inference Protocol's costs, as ratios measured in one run: feature-aware ModelInfer
vs augur.v1 Predict on the same rows; ModelInfer with the features given, Augur vs Seldon
MLServer on the same LightGBM file; and a `kind: remote` model on MLServer vs calling MLServer
directly. Each pair alternates in rounds on one closed-loop caller; batch 1 and 100.

    python -m bench.oip [--calls 400]      (about 3 minutes on 2 cores; MLServer's virtualenv
                                            is built first if tests have not built it)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import yaml

from augur.api.oip import open_inference_pb2 as oip
from augur.api.oip import open_inference_pb2_grpc as oip_grpc
from augur.api.v1 import predictor_pb2 as pb
from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from augur.features.redis_server import EmbeddedRedis, free_port
from augur.modelrepo.repository import ModelRepository
from bench.mlserver import MLServer
from examples.fraud.generate import Scale
from examples.fraud.scaffold import scaffold

ROOT = Path(__file__).resolve().parent.parent
SMALL = Scale(users=400, merchants=80, transactions=8_000, days=30)
ROUND = 50  # calls of one kind before the other kind's turn


def _entities(rows: int, seed: int) -> tuple[list[int], list[int], list[float]]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 400, rows).tolist(),
        rng.integers(0, 80, rows).tolist(),
        rng.uniform(1, 500, rows).round(2).tolist(),
    )


def _infer_request(model: str, name: str, values: np.ndarray, datatype: str):
    tensor = oip.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=list(values.shape)
    )
    return tensor, np.ascontiguousarray(values).tobytes()


def _features_request(model: str, batch: np.ndarray) -> oip.ModelInferRequest:
    tensor, raw = _infer_request(model, "input-0", batch.astype(np.float32), "FP32")
    return oip.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[raw])


def _keys_request(model: str, users, merchants, amounts) -> oip.ModelInferRequest:
    parts = [
        _infer_request(model, "user_id", np.array(users, np.int64), "INT64"),
        _infer_request(model, "merchant_id", np.array(merchants, np.int64), "INT64"),
        _infer_request(model, "amount", np.array(amounts, np.float32), "FP32"),
    ]
    return oip.ModelInferRequest(
        model_name=model, inputs=[t for t, _ in parts], raw_input_contents=[r for _, r in parts]
    )


def _pair(a, b, calls: int) -> tuple[list[float], list[float]]:
    """Latencies (s) of `calls` calls of each of a and b, alternating in rounds."""
    times: tuple[list[float], list[float]] = ([], [])
    for call in (a, b):
        for _ in range(20):
            call()  # warm: channels, caches, the first batch's allocations
    while len(times[1]) < calls:
        for i, call in enumerate((a, b)):
            for _ in range(ROUND):
                began = time.perf_counter()
                call()
                times[i].append(time.perf_counter() - began)
    return times


def _row(name: str, rows: int, a: list[float], b: list[float], target: str) -> dict:
    p50a, p50b = float(np.median(a)), float(np.median(b))
    p99a, p99b = float(np.percentile(a, 99)), float(np.percentile(b, 99))
    return {
        "comparison": name,
        "rows": rows,
        "p50_ratio": round(p50a / p50b, 3),
        "p99_ratio": round(p99a / p99b, 3),
        "p50_ms": (round(p50a * 1e3, 3), round(p50b * 1e3, 3)),
        "target": target,
    }


def run(calls: int) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="augur-bench-oip-"))
    processes: list = []
    try:
        with EmbeddedRedis() as redis:
            return _measure(work, redis.address, calls, processes)
    finally:
        for p in processes:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


class _Augur:
    def __init__(self, config: Path, port: int) -> None:
        command = [sys.executable, "-m", "augur.cli.main", "serve", "--config", str(config)]
        self.log = config.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
        self.port = port

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        print(self.log.read_text()[-6000:], file=sys.stderr)


def _measure(work: Path, address: str, calls: int, processes: list) -> list[dict]:
    from augur.pipelines.materialize import materialize
    from augur.pipelines.train import train

    repo = work / "feature_repo"
    scaffold(repo, address, SMALL)
    materialize(repo, address)
    models = work / "models"
    train(repo, models, address, progress=False)
    shutil.rmtree(models / "fraud_mlp")  # LightGBM only: the model MLServer serves too
    version = ModelRepository(models).resolve("fraud_lgbm")
    mlserver = MLServer(work / "mlserver", "fraud_lgbm", version.artifact).start()
    processes.append(mlserver)
    (models / "fraud_remote").mkdir()
    (models / "fraud_remote" / "model.yaml").write_text(
        yaml.safe_dump(
            {
                "kind": "remote",
                "feature_service": "fraud_lgbm",
                "request_features": ["amount"],
                "outputs": ["fraud_probability"],
                "remote": {
                    "features": list(version.features),
                    "backends": [{"address": mlserver.address, "model": "fraud_lgbm"}],
                },
            }
        )
    )
    port = free_port()
    config = work / "augur.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "feature_repo": str(repo),
                "model_repo": str(models),
                "redis": {"address": address},
                "server": {"port": port, "metrics_port": 0},
            }
        )
    )
    augur = _Augur(config, port)
    processes.append(augur)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=120)
    predictor = pb_grpc.PredictorStub(channel)
    inference = oip_grpc.GRPCInferenceServiceStub(channel)
    until = time.monotonic() + 120
    while not inference.ServerReady(oip.ServerReadyRequest()).ready:
        if time.monotonic() > until:
            raise RuntimeError("augur did not load its models")
        time.sleep(0.2)
    direct = oip_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(mlserver.address))
    results = []
    for rows in (1, 100):
        users, merchants, amounts = _entities(rows, rows)
        predict = pb.PredictRequest(
            model="fraud_lgbm",
            entities={
                "user_id": pb.EntityColumn(int64s=pb.Int64List(values=users)),
                "merchant_id": pb.EntityColumn(int64s=pb.Int64List(values=merchants)),
            },
            request_features={"amount": pb.DoubleList(values=amounts)},
            options=pb.PredictOptions(return_features=True),
        )
        answer = predictor.Predict(predict)
        batch = np.array(answer.features.values, np.float32).reshape(rows, -1)
        keys = _keys_request("fraud_lgbm", users, merchants, amounts)
        given = _features_request("fraud_lgbm", batch)
        remote = _features_request("fraud_remote", batch)
        a, b = _pair(
            partial(inference.ModelInfer, keys), partial(predictor.Predict, predict), calls
        )
        results.append(_row("feature-aware ModelInfer / augur.v1 Predict", rows, a, b, "<=1.1"))
        a, b = _pair(partial(inference.ModelInfer, given), partial(direct.ModelInfer, given), calls)
        results.append(_row("Augur ModelInfer, features given / MLServer", rows, a, b, ""))
        a, b = _pair(
            partial(inference.ModelInfer, remote), partial(direct.ModelInfer, given), calls
        )
        results.append(_row("remote model via Augur / MLServer directly", rows, a, b, "<=1.2 p50"))
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| comparison | rows | p50 ratio | p99 ratio | p50 ms (first, second) | target |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in results:
        first, second = r["p50_ms"]
        lines.append(
            f"| {r['comparison']} | {r['rows']} | {r['p50_ratio']} | {r['p99_ratio']} | "
            f"{first}, {second} | {r['target']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.oip",
        description="OIP ModelInfer vs Predict, vs MLServer, and remote-model overhead (ratios)",
    )
    parser.add_argument("--calls", type=int, default=400, help="calls of each kind per pair")
    args = parser.parse_args(argv)
    results = run(args.calls)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "oip.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
