"""Where a model runs: `device: cuda` puts an ONNX model on ONNX Runtime's CUDA execution
provider and a torch.export program on the GPU (scores as on CPU), and is refused, saying
what to change, where this host or this onnxruntime build has no CUDA."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from augur.modelrepo.repository import ModelRepository, ModelSpec  # noqa: E402
from augur.pipelines.mlp import export_mlp, fit_mlp  # noqa: E402
from augur.serving.runtimes import load_runtime  # noqa: E402
from tests.runtime_models import hard_rows, onnx_logistic, train_rows  # noqa: E402

N = 9
FEATURES = {"features": [f"f{i}" for i in range(N)]}
ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _publish(tmp_path, kind: str, device: str):
    repo = ModelRepository(tmp_path / "models")
    if kind == "onnx":
        artifact = onnx_logistic(tmp_path / "m.onnx", N)
    else:
        x, y = train_rows(N, rows=500)
        net = fit_mlp(x, y, hidden=(16,), epochs=1, progress=False)
        artifact = export_mlp(net, x, tmp_path / "m.pt2")
    return repo.publish(ModelSpec(kind, kind, "fs", device=device), artifact, FEATURES)


def _on_cpu(version):
    return dataclasses.replace(version, spec=dataclasses.replace(version.spec, device="cpu"))


@pytest.mark.skipif(ORT_CUDA, reason="this onnxruntime has a CUDA execution provider")
def test_onnx_on_cuda_without_a_cuda_provider_is_refused_saying_what_to_install(tmp_path):
    version = _publish(tmp_path, "onnx", "cuda")
    with pytest.raises(RuntimeError, match="no CUDA execution provider") as refused:
        load_runtime(version)
    assert "onnxruntime-gpu" in str(refused.value) and "device: cpu" in str(refused.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA device")
def test_torch_export_on_cuda_without_a_gpu_is_refused_saying_what_to_change(tmp_path):
    version = _publish(tmp_path, "torch", "cuda")
    with pytest.raises(RuntimeError, match="no CUDA device is available; set device: cpu"):
        load_runtime(version)


@pytest.mark.gpu
@pytest.mark.skipif(not ORT_CUDA, reason="needs onnxruntime's CUDA execution provider")
def test_onnx_on_cuda_scores_as_on_cpu(tmp_path):
    version = _publish(tmp_path, "onnx", "cuda")
    gpu, cpu = load_runtime(version), load_runtime(_on_cpu(version))
    rows = hard_rows(N)
    assert gpu.session.get_providers()[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(gpu.predict(rows), cpu.predict(rows), rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_export_on_cuda_scores_as_on_cpu_through_graphs(tmp_path):
    version = _publish(tmp_path, "torch", "cuda")
    gpu, cpu = load_runtime(version), load_runtime(_on_cpu(version))
    rows = hard_rows(N)
    assert gpu._cuda is not None and gpu._cuda.graphs  # captured at load
    np.testing.assert_allclose(gpu.predict(rows), cpu.predict(rows), rtol=0, atol=1e-5)
