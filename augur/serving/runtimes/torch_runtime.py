"""PyTorch models: torch.export programs (model.pt2, loaded weights-only: no Python code is
unpickled or run) and, for one more release, TorchScript (model.pt, deprecated in torch).

On CPU the batch goes to the module as it is (no copy). On CUDA each loaded model has its
own stream and pinned staging buffers, so one call costs one host-to-device copy, the
forward and one device-to-host copy, overlapping other models' work on the GPU. When the
model's input width is known at load, its forward is also captured as CUDA graphs, one per
power-of-two batch size up to `GRAPH_ROWS` rows: a call replays the smallest graph that
holds its rows in one launch, where the forward launches each of its kernels from Python
(a tabular MLP's dozen kernels cost ~0.2 ms of launches for 1 row on an H100, the replay
a fraction of that).
"""

from __future__ import annotations

import io
import logging
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

# The widest batch replayed from a graph; wider ones run the forward as it is, where the
# launches are a small part of the work. 11 graphs (1, 2, 4, ... 1024 rows).
GRAPH_ROWS = 1024
GRAPH_TOLERANCE = 1e-5  # graph against forward, as CUDA against CPU in the tests
_WARM_RUNS = 3  # TorchScript's executor profiles and optimises over the first runs


class TorchRuntime:
    def __init__(
        self, path: Path, device: str = "cpu", threads: int = 1, n_inputs: int | None = None
    ):
        """`n_inputs`: the model's input width; on CUDA it lets the forward be captured as
        graphs at load (None: no graphs)."""
        if device.startswith("cuda"):
            _check_cuda(path, device)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        self.device = device
        self.threads = threads
        if Path(path).suffix == ".pt2":
            self.module = _load_exported(Path(path), device)
        else:
            log.warning(
                "%s is TorchScript, which torch deprecates; Augur reads it for one more "
                "release: retrain (augur train writes model.pt2) or save with torch.export.save",
                path,
            )
            self.module = torch.jit.load(str(path), map_location=device).eval()
        self._cuda = None
        if device.startswith("cuda"):
            self._cuda = _CudaCall(self.module, torch.device(device))
            if n_inputs:
                self._cuda.capture(n_inputs, GRAPH_ROWS, str(path))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self._cuda is not None:
            return self._cuda(batch)
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch, np.float32)))
        return out.detach().numpy().astype(np.float32, copy=False).reshape(len(batch), -1)


class _ExportedForward:
    """An ExportedProgram's graph called with its weights as arguments: what
    `ExportedProgram.module()` does, less its per-call pytree and guard work (a 1-row call
    of a small MLP: ~290 us through module(), ~80 us here, ~75 us eager; torch 2.13)."""

    def __init__(self, program: torch.export.ExportedProgram, device: str):
        from torch.export.graph_signature import InputKind, OutputKind

        signature = program.graph_signature
        state = {**program.state_dict, **program.constants}
        self.graph = program.graph_module.to(device)
        self.before, self.after = [], []
        seen_input = False
        for spec in signature.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                seen_input = True
                continue
            (self.after if seen_input else self.before).append(state[spec.target].to(device))
        outputs = [
            i for i, o in enumerate(signature.output_specs) if o.kind == OutputKind.USER_OUTPUT
        ]
        self.output = outputs[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(*self.before, x, *self.after)[self.output]


def _load_exported(path: Path, device: str):
    """torch.export.load, after refusing what it would unpickle unsafely: its sample inputs
    are read with weights_only=False when weights_only=True fails, so they must pass here."""
    from torch.export.graph_signature import InputKind, OutputKind

    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if "/sample_inputs/" in name:
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as e:
                    raise RuntimeError(
                        f"{path}: its sample inputs ({name}) are not plain tensors ({e}); "
                        f"refusing to unpickle them"
                    ) from None
    program = torch.export.load(str(path))
    signature = program.graph_signature
    user_inputs = [s for s in signature.input_specs if s.kind == InputKind.USER_INPUT]
    if len(user_inputs) != 1:
        raise RuntimeError(
            f"{path}: the program takes {len(user_inputs)} inputs; an Augur model takes one "
            f"float32 (rows, features) tensor"
        )
    value = program.graph.find_nodes(op="placeholder")[
        signature.input_specs.index(user_inputs[0])
    ].meta.get("val")
    if value is not None and isinstance(value.shape[0], int):
        raise RuntimeError(
            f"{path}: exported for batches of exactly {value.shape[0]} rows; export with "
            f"dynamic_shapes={{'x': {{0: torch.export.Dim('rows')}}}} so any batch runs"
        )
    stateless = all(o.kind == OutputKind.USER_OUTPUT for o in signature.output_specs) and all(
        s.target in {**program.state_dict, **program.constants} or s.kind == InputKind.USER_INPUT
        for s in signature.input_specs
    )
    if stateless:
        return _ExportedForward(program, device)
    return program.module().to(device)  # mutates buffers: torch's own wrapper keeps them


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor  # (rows, n_inputs) on the device: what a replay reads
    outputs: torch.Tensor  # (rows, outputs) float32 on the device: what a replay writes


class _CudaCall:
    """One model's path through the GPU: pinned staging, its own stream, one lock, and
    its graphs.

    Pinned (page-locked) host memory is what lets a copy run asynchronously on a stream;
    allocating it costs far more than the copy, so the buffers persist and grow to the
    largest batch seen. The lock keeps concurrent callers (gRPC worker threads) from
    sharing a buffer, a graph's inputs or the stream.
    """

    def __init__(self, module: torch.jit.ScriptModule, device: torch.device):
        self.module = module
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        # Loading the weights ran on the device's default stream; this stream must not
        # read them before that work is done.
        self.stream.wait_stream(torch.cuda.default_stream(device))
        self.lock = threading.Lock()
        self.inputs = _pinned(0)
        self.outputs = _pinned(0)
        self.graphs: dict[int, _Graph] = {}  # by rows, powers of two

    def capture(self, n_inputs: int, max_rows: int, name: str) -> None:
        """Capture the forward for each power-of-two batch up to `max_rows`, checking each
        graph against the forward. A model that cannot be captured (it reads a value back
        to the host, say) or whose rows' scores depend on the other rows of the batch (a
        replay pads the batch to the graph's rows) runs without graphs; the log says why."""
        sizes = [1 << i for i in range(max_rows.bit_length())]  # 1, 2, 4 ... <= max_rows
        pool = torch.cuda.graph_pool_handle()  # one memory pool for all of them
        with self.lock, torch.inference_mode():
            try:
                for rows in reversed(sizes):  # largest first: the smaller reuse its memory
                    self.graphs[rows] = self._capture(rows, n_inputs, pool)
                self._check(n_inputs)
            except Exception as e:
                self.graphs.clear()
                torch.cuda.synchronize(self.device)
                log.warning("%s: forward runs without CUDA graphs: %s", name, e)

    def _capture(self, rows: int, n_inputs: int, pool) -> _Graph:
        with torch.cuda.stream(self.stream):
            inputs = torch.zeros((rows, n_inputs), dtype=torch.float32, device=self.device)
            for _ in range(_WARM_RUNS):
                self.module(inputs)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: other models' calls on other threads go on during the capture
        with torch.cuda.graph(
            graph, pool=pool, stream=self.stream, capture_error_mode="thread_local"
        ):
            outputs = self.module(inputs).to(torch.float32).reshape(rows, -1)
        return _Graph(graph, inputs, outputs)

    def _check(self, n_inputs: int) -> None:
        """Each graph's scores for a batch short of its rows, the rest of its inputs
        different, must equal the forward's for that batch alone."""
        rng = np.random.default_rng(0)
        for rows, g in self.graphs.items():
            n = max(1, rows - 1 - rows // 3)
            probe = rng.lognormal(sigma=2.0, size=(n, n_inputs)).astype(np.float32)
            probe[rng.random(probe.shape) < 0.2] = np.nan
            with torch.cuda.stream(self.stream):
                x = torch.from_numpy(probe).to(self.device)
                expected = self.module(x).to(torch.float32).reshape(n, -1)
                g.inputs.normal_()
                g.inputs[:n].copy_(x)
                g.graph.replay()
                got = g.outputs[:n]
                gap = float((got - expected).abs().nan_to_num(0.0).max())
                same_nan = torch.equal(got.isnan(), expected.isnan())
            if gap > GRAPH_TOLERANCE or not same_nan:
                raise RuntimeError(
                    f"the {rows}-row graph's scores differ from the forward's by {gap} "
                    f"(NaN alike: {same_nan}); do a row's scores depend on the other rows?"
                )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        rows = len(batch)
        with self.lock, torch.inference_mode():
            if self.inputs.numel() < batch.size:
                self.inputs = _pinned(_grown(self.inputs.numel(), batch.size))
            staged = self.inputs[: batch.size].view(batch.shape)
            np.copyto(staged.numpy(), batch, casting="same_kind")
            graph = self.graphs.get(1 << (rows - 1).bit_length()) if rows else None
            with torch.cuda.stream(self.stream):
                if graph is None:
                    x = staged.to(self.device, non_blocking=True)
                    out = self.module(x).to(torch.float32).reshape(rows, -1)
                else:  # rows past the batch's keep what they held: no row reads another
                    graph.inputs[:rows].copy_(staged, non_blocking=True)
                    graph.graph.replay()
                    out = graph.outputs[:rows]
                if self.outputs.numel() < out.numel():
                    self.outputs = _pinned(_grown(self.outputs.numel(), out.numel()))
                result = self.outputs[: out.numel()].view(out.shape)
                result.copy_(out, non_blocking=True)
            self.stream.synchronize()  # this model's work only; other streams run on
            return result.numpy().copy()  # the staging buffer is the next caller's


def _pinned(n: int) -> torch.Tensor:
    return torch.empty(n, dtype=torch.float32, pin_memory=True)


def _grown(have: int, need: int) -> int:
    """Doubling: a slowly rising batch size pins memory a few times, not at every call."""
    return max(need, 2 * have)


def _check_cuda(path: Path, device: str) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{path}: device {device!r} requested but no CUDA device is "
            f"available; set device: cpu in model.yaml"
        )
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        raise RuntimeError(
            f"{path}: device {device!r} requested but this host has "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
