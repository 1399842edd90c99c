"""Torch models on `device: cuda` score like on CPU, through pinned buffers that grow with the
batch, a stream of their own and CUDA graphs where the model allows them, and concurrent
callers each get their own rows back, over gRPC too; on CPU the module scores the batch as
given."""

from __future__ import annotations

import dataclasses
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from augur.modelrepo.repository import ModelRepository, ModelSpec
from augur.pipelines.mlp import TabularMLP
from augur.serving.runtimes import load_runtime
from augur.serving.runtimes.torch_runtime import GRAPH_ROWS, TorchRuntime

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
@pytest.mark.parametrize("graphs", [False, True], ids=["forward", "graphs"])
def test_concurrent_cuda_calls_each_get_their_own_scores(scripted, graphs):
    cpu = TorchRuntime(scripted, "cpu")
    cuda = TorchRuntime(scripted, "cuda", n_inputs=N_FEATURES if graphs else None)
    assert bool(cuda._cuda.graphs) == graphs
    batches = [_rows(1 + 150 * i, seed=i) for i in range(8)]  # 1 to 1051 rows: growth mid-run
    expected = [cpu.predict(b) for b in batches]
    for i, answers in enumerate(_in_threads(cuda, batches, rounds=20)):
        for answer in answers:
            assert answer.shape == expected[i].shape
            np.testing.assert_allclose(answer, expected[i], rtol=0, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graphs_score_like_cpu_at_every_batch_size(scripted):
    cpu, cuda = TorchRuntime(scripted, "cpu"), TorchRuntime(scripted, "cuda", n_inputs=N_FEATURES)
    sizes = [1 << i for i in range(GRAPH_ROWS.bit_length())]
    assert sorted(cuda._cuda.graphs) == sizes
    # padded (3 into 4), exact, the widest graph, past it (the forward), and back down
    for n in (3, 1, 2, 7, 64, 100, 1000, GRAPH_ROWS, GRAPH_ROWS + 300, 5, 3):
        rows = _rows(n, seed=n)
        scores = cuda.predict(rows)
        assert scores.dtype == np.float32 and scores.shape == (n, 1)
        np.testing.assert_allclose(scores, cpu.predict(rows), rtol=0, atol=1e-5)


class _MixesRows(torch.nn.Module):
    """Each row's score depends on the batch's mean: padding a batch would change it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nan_to_num(x)
        return (x - x.mean(dim=0, keepdim=True)).sum(dim=1, keepdim=True)


class _ReadsBack(torch.nn.Module):
    """Branches on a value read back from the GPU, which a graph cannot capture."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x > 1e9).any()):
            return torch.zeros((x.shape[0], 1), device=x.device)
        return torch.nan_to_num(x).sum(dim=1, keepdim=True)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("module", [_MixesRows, _ReadsBack])
def test_a_model_graphs_cannot_serve_runs_its_forward(module, scripted, tmp_path, caplog):
    path = tmp_path / "model.pt"
    torch.jit.script(module()).save(str(path))
    with caplog.at_level(logging.WARNING, "augur.serving.runtimes.torch_runtime"):
        cuda = TorchRuntime(path, "cuda", n_inputs=N_FEATURES)
    assert cuda._cuda.graphs == {}
    assert "forward runs without CUDA graphs" in caplog.text
    cpu = TorchRuntime(path, "cpu")
    for n in (1, 3, 50):
        rows = _rows(n, seed=n)
        np.testing.assert_allclose(cuda.predict(rows), cpu.predict(rows), rtol=1e-5, atol=1e-4)
    # the failed capture left the device usable: the next model captures its graphs
    assert TorchRuntime(scripted, "cuda", n_inputs=N_FEATURES)._cuda.graphs


@pytest.mark.gpu
@needs_cuda
def test_predict_on_cuda_batches_concurrent_callers_and_scores_like_cpu(
    fraud_repo, model_repo, tmp_path
):
    from augur.client.client import PredictorClient
    from augur.serving.server import start
    from tests.conftest import server_config

    source = ModelRepository(model_repo).resolve("fraud_mlp")
    repo = ModelRepository(tmp_path / "models")
    keep = ("features", "feature_dtypes", "request_features", "outputs")
    metadata = {k: source.metadata[k] for k in keep if k in source.metadata}
    version = repo.publish(
        dataclasses.replace(source.spec, device="cuda"), source.artifact, metadata
    )
    assert load_runtime(repo.resolve("fraud_mlp"))._cuda.graphs  # the server's loader
    config = server_config(fraud_repo, repo.root)
    config = dataclasses.replace(
        config,
        server=dataclasses.replace(config.server, batch_max_rows=64, batch_max_delay_us=2000),
    )
    cpu_module = torch.jit.load(str(version.artifact))
    batches_before = REGISTRY.get_sample_value("augur_batch_calls_count", {"model": "fraud_mlp"})
    running = start(config)
    try:
        with PredictorClient(f"127.0.0.1:{running.port}") as client:
            client.wait_ready(30)

            def call(i: int):
                answer = client.predict(
                    "fraud_mlp",
                    {"user_id": [i % 400], "merchant_id": [i % 80]},
                    {"amount": [float(i % 97)]},
                    return_features=True,
                )
                with torch.inference_mode():
                    expected = cpu_module(torch.from_numpy(answer.features)).numpy()
                np.testing.assert_allclose(answer.scores, expected, rtol=0, atol=1e-5)
                return answer

            with ThreadPoolExecutor(32) as pool:
                answers = list(pool.map(call, range(2_000)))
    finally:
        running.stop()
    assert all(a.version == version.version and a.scores.shape == (1, 1) for a in answers)
    batches = REGISTRY.get_sample_value("augur_batch_calls_count", {"model": "fraud_mlp"})
    assert batches - (batches_before or 0) < 2_000  # some batches held several callers' rows
