"""Stand-in models of every kind for the model-call benchmark, shaped like the fraud models
(38 inputs; trees: 200 of depth 6 or 31 leaves; networks: 64-64 MLPs), each with its
framework's own predict as users call it. Builds only; bench/model_call.py times them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

TREES = 200


def training_rows(n_inputs: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(mean=1.0, sigma=1.5, size=(20_000, n_inputs))
    x[rng.random(x.shape) < 0.2] = np.nan
    logit = np.nan_to_num(np.sign(x) * np.log1p(np.abs(x))) @ rng.normal(size=n_inputs) / 4
    y = (logit + np.random.default_rng(seed + 1).logistic(size=len(x)) > 2).astype(np.float32)
    return x.astype(np.float32), y


def xgboost_model(tmp: Path, x, y) -> tuple[Path, Callable]:
    import xgboost as xgb

    params = {"objective": "binary:logistic", "max_depth": 6, "eta": 0.05, "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(x, y), num_boost_round=TREES)
    booster.save_model(str(tmp / "model.ubj"))
    own = xgb.Booster(model_file=str(tmp / "model.ubj"))
    return tmp / "model.ubj", lambda b: own.predict(xgb.DMatrix(b, missing=np.nan))


def catboost_model(tmp: Path, x, y) -> tuple[Path, Callable]:
    from catboost import CatBoostClassifier

    model = CatBoostClassifier(
        iterations=TREES, depth=6, thread_count=1, verbose=0, allow_writing_files=False
    )
    model.fit(x, y)
    model.save_model(str(tmp / "model.cbm"))
    own = CatBoostClassifier().load_model(str(tmp / "model.cbm"))
    return tmp / "model.cbm", lambda b: own.predict_proba(b)[:, 1]


def torch_model(tmp: Path, x, y) -> tuple[Path, Callable]:
    import torch

    from augur.pipelines.mlp import export_mlp, fit_mlp

    net = fit_mlp(x[:4000], y[:4000], hidden=(64, 64), epochs=1, progress=False)
    path = export_mlp(net, x, tmp / "model.pt2")
    own = torch.export.load(str(path)).module()

    def predict(b):
        with torch.inference_mode():
            return own(torch.from_numpy(b)).numpy()

    return path, predict


def onnx_model(tmp: Path, x, y) -> tuple[Path, Callable]:
    """A 64-64 MLP with missing values filled, as an ONNX graph (random weights: the
    timing depends on the shapes, not the values)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    n = x.shape[1]
    shapes = [(n, 64), (64, 64), (64, 1)]
    init = [helper.make_tensor("fill", TensorProto.FLOAT, [n], np.zeros(n, np.float32))]
    nodes = [
        helper.make_node("IsNaN", ["x"], ["missing"]),
        helper.make_node("Where", ["missing", "fill", "x"], ["h0"]),
    ]
    for i, (a, b) in enumerate(shapes):
        w = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
        init += [
            helper.make_tensor(f"w{i}", TensorProto.FLOAT, [a, b], w.ravel()),
            helper.make_tensor(f"b{i}", TensorProto.FLOAT, [b], np.zeros(b, np.float32)),
        ]
        nodes += [
            helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Relu" if i < 2 else "Sigmoid", [f"a{i}"], [f"h{i + 1}"]),
        ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", n])],
        [helper.make_tensor_value_info("h3", TensorProto.FLOAT, ["rows", 1])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp / "model.onnx"))
    own = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
    return tmp / "model.onnx", lambda b: own.run(None, {"x": b})[0]


BUILDERS = {
    "xgboost": xgboost_model,
    "catboost": catboost_model,
    "onnx": onnx_model,
    "torch": torch_model,
}
