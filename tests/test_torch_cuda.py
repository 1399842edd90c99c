"""Torch models on `device: cuda` score like on CPU, through pinned buffers that grow with the
batch and a stream of their own, and concurrent callers each get their own rows back; on
CPU the module scores the batch as given."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from pipelines.mlp import TabularMLP
from predictor.repository import ModelRepository, ModelSpec
from predictor.runtimes import load_runtime
from predictor.runtimes.torch_runtime import TorchRuntime

N_FEATURES = 38
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """The model family `augur train` builds (NaN imputation inside), with fixed weights."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    stats = [torch.from_numpy(rng.normal(size=N_FEATURES).astype(np.float32)) for _ in range(2)]
    net = TabularMLP(stats[0], stats[1], torch.ones(N_FEATURES), hidden=(64, 64)).eval()
    path = tmp_path_factory.mktemp("torch") / "model.pt"
    torch.jit.script(net).save(str(path))
    return path


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(sigma=2.0, size=(n, N_FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    return x


def _in_threads(runtime: TorchRuntime, batches: list[np.ndarray], rounds: int) -> list:
    """Each thread scores its own batch `rounds` times; every answer is kept."""
    answers: list[list[np.ndarray]] = [[] for _ in batches]
    start = threading.Barrier(len(batches))

    def caller(i: int) -> None:
        start.wait()
        for _ in range(rounds):
            answers[i].append(runtime.predict(batches[i]))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_cpu_scores_are_the_module_own_output(scripted):
    runtime = TorchRuntime(scripted, "cpu")
    module = torch.jit.load(str(scripted))
    for n in (1, 7, 256):
        rows = _rows(n, seed=n)
        with torch.inference_mode():
            expected = module(torch.from_numpy(rows)).numpy()
        scores = runtime.predict(rows)
        assert scores.dtype == np.float32 and scores.shape == (n, 1)
        np.testing.assert_array_equal(scores, expected)


def test_concurrent_cpu_calls_each_get_their_own_scores(scripted):
    runtime = TorchRuntime(scripted, "cpu")
    batches = [_rows(1 + 13 * i, seed=i) for i in range(8)]
    expected = [runtime.predict(b) for b in batches]
    for i, answers in enumerate(_in_threads(runtime, batches, rounds=10)):
        for answer in answers:
            np.testing.assert_array_equal(answer, expected[i])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA device")
def test_cuda_model_without_a_gpu_is_refused_saying_what_to_change(scripted, tmp_path):
    repo = ModelRepository(tmp_path / "models")
    spec = ModelSpec("mlp", "torch", "mlp_service", device="cuda")
    version = repo.publish(spec, scripted, {"features": [f"f{i}" for i in range(N_FEATURES)]})
    with pytest.raises(RuntimeError, match="no CUDA device is available; set device: cpu"):
        load_runtime(version)


@pytest.mark.gpu
@needs_cuda
def test_cuda_scores_equal_cpu_scores_as_the_pinned_buffer_grows(scripted):
    cpu, cuda = TorchRuntime(scripted, "cpu"), TorchRuntime(scripted, "cuda")
    for n in (1, 7, 256, 1000):
        rows = _rows(n, seed=n)
        scores = cuda.predict(rows)
        assert scores.dtype == np.float32 and scores.shape == (n, 1)
        np.testing.assert_allclose(scores, cpu.predict(rows), rtol=0, atol=1e-5)
    staging = cuda._cuda.inputs
    assert staging.is_pinned() and staging.numel() >= 1000 * N_FEATURES

    np.testing.assert_allclose(cuda.predict(_rows(7, 1)), cpu.predict(_rows(7, 1)), atol=1e-5)
    assert cuda._cuda.inputs is staging  # a smaller batch reuses the buffer


@pytest.mark.gpu
@needs_cuda
def test_concurrent_cuda_calls_each_get_their_own_scores(scripted):
    cpu, cuda = TorchRuntime(scripted, "cpu"), TorchRuntime(scripted, "cuda")
    batches = [_rows(1 + 150 * i, seed=i) for i in range(8)]  # 1 to 1051 rows: growth mid-run
    expected = [cpu.predict(b) for b in batches]
    for i, answers in enumerate(_in_threads(cuda, batches, rounds=20)):
        for answer in answers:
            assert answer.shape == expected[i].shape
            np.testing.assert_allclose(answer, expected[i], rtol=0, atol=1e-5)
