"""Small real models of every built-in kind for the runtime tests: an ONNX graph built with
onnx.helper, XGBoost, CatBoost and torch.export models trained on generated rows, and the
framework's own predict for each, to check Augur's scores against."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np

from augur.modelrepo.repository import ModelRepository, ModelVersion, sha256_of


def onnx_logistic(path: Path, n_inputs: int, seed: int = 0, width: int | None = None) -> Path:
    """A logistic model as an ONNX graph: missing inputs filled, signed log, MatMul, Add,
    Sigmoid. `width`: the input width the graph declares (default n_inputs)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    weights = (rng.normal(size=(n_inputs, 1)) / np.sqrt(n_inputs)).astype(np.float32)
    fill = rng.normal(size=n_inputs).astype(np.float32)
    width = n_inputs if width is None else width
    nodes = [
        helper.make_node("IsNaN", ["x"], ["missing"]),
        helper.make_node("Where", ["missing", "fill", "x"], ["filled"]),
        helper.make_node("Abs", ["filled"], ["magnitude"]),
        helper.make_node("Add", ["magnitude", "one"], ["shifted"]),
        helper.make_node("Log", ["shifted"], ["logged"]),
        helper.make_node("Sign", ["filled"], ["sign"]),
        helper.make_node("Mul", ["sign", "logged"], ["signed_log"]),
        helper.make_node("MatMul", ["signed_log", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "logistic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", width])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["rows", 1])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel()),
            helper.make_tensor("b", TensorProto.FLOAT, [1], [0.1]),
            helper.make_tensor("fill", TensorProto.FLOAT, [n_inputs], fill),
            helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def train_rows(n_inputs: int, rows: int = 2_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(1.0, 1.5, size=(rows, n_inputs)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    signal = np.nan_to_num(np.log1p(x)) @ rng.normal(size=n_inputs) / 4
    return x, (signal + rng.logistic(size=rows) > 1).astype(np.float32)


def variant(kind: str, n_inputs: int, tmp: Path, seed: int) -> Path:
    """A model of `kind` over `n_inputs` inputs whose scores differ with `seed`."""
    x, y = train_rows(n_inputs, seed=seed)
    if kind == "onnx":
        return onnx_logistic(tmp / f"variant-{seed}.onnx", n_inputs, seed)
    if kind == "xgboost":
        import xgboost as xgb

        params = {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": seed}
        booster = xgb.train(params, xgb.DMatrix(x, y), num_boost_round=20)
        booster.save_model(str(tmp / f"variant-{seed}.ubj"))
        return tmp / f"variant-{seed}.ubj"
    if kind == "catboost":
        from catboost import CatBoostClassifier

        model = CatBoostClassifier(
            iterations=20,
            depth=3,
            random_seed=seed,
            thread_count=1,
            verbose=0,
            allow_writing_files=False,
        )
        model.fit(x, y)
        model.save_model(str(tmp / f"variant-{seed}.cbm"))
        return tmp / f"variant-{seed}.cbm"
    raise ValueError(kind)


def framework_scores(version: ModelVersion, rows: np.ndarray) -> np.ndarray:
    """The model's scores from its framework's own API, as its users would call it."""
    return np.asarray(_framework_predict(str(version.artifact), version.spec.kind)(rows))


@functools.cache
def _framework_predict(path: str, kind: str):
    """Each artifact loaded once (versions never change): rows -> (rows, outputs)."""
    if kind == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster(model_file=path)

        def predict(rows):
            matrix = xgb.DMatrix(rows, missing=np.nan, feature_names=booster.feature_names)
            return booster.predict(matrix).reshape(len(rows), -1)

        return predict
    if kind == "catboost":
        from catboost import CatBoostClassifier

        model = CatBoostClassifier().load_model(path)
        return lambda rows: model.predict_proba(rows)[:, 1:]
    if kind == "onnx":
        import onnx
        from onnx.reference import ReferenceEvaluator  # onnx's own, not ONNX Runtime

        evaluator = ReferenceEvaluator(onnx.load(path))
        return lambda rows: np.asarray(evaluator.run(None, {"x": rows})[0]).reshape(len(rows), -1)
    if kind == "torch":
        import torch

        program = torch.export.load(path).module()

        def predict(rows):
            with torch.inference_mode():
                return program(torch.from_numpy(rows)).numpy().reshape(len(rows), -1)

        return predict
    if kind == "lightgbm":
        import lightgbm as lgb

        booster = lgb.Booster(model_file=path)
        return lambda rows: booster.predict(rows).reshape(len(rows), -1)
    raise ValueError(kind)


def hard_rows(n_inputs: int, rows: int = 500, seed: int = 1) -> np.ndarray:
    """Rows as traffic brings them: heavy tails, missing values, rows with nothing known."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(1.0, 2.0, size=(rows, n_inputs)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = np.nan
    x[:5] = np.nan
    x[5:10] = 0.0
    return x


def force_version(repo: ModelRepository, name: str, files: dict[str, bytes], artifact: str):
    """Write a version folder by hand, past publish's checks (as a copy, an older tool or
    someone with write access might), with a metadata.json whose sha256 matches."""
    base = repo.resolve(name, "v1")
    folder = repo.root / name / f"v{len(repo.versions(name)) + 1}"
    folder.mkdir()
    for file, data in files.items():
        (folder / file).write_bytes(data)
    metadata = {**base.metadata, "artifact": artifact, "version": folder.name}
    metadata["sha256"] = sha256_of(folder / artifact)
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return repo.resolve(name, folder.name)


def copy_repo(source: Path, dest: Path, models_yaml: str) -> Path:
    """The feature repo's definitions and data with models.yaml replaced."""
    shutil.copytree(source, dest)
    (dest / "models.yaml").write_text(models_yaml)
    return dest
