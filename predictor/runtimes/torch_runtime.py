"""PyTorch models saved as TorchScript: loaded without unpickling arbitrary Python code.

On CPU the batch goes to the module as it is (no copy). On CUDA each loaded model has its
own stream and pinned staging buffers, so one call costs one host-to-device copy, the
forward and one device-to-host copy, overlapping other models' work on the GPU.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch


class TorchRuntime:
    def __init__(self, path: Path, device: str = "cpu", threads: int = 1):
        if device.startswith("cuda"):
            _check_cuda(path, device)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        self.device = device
        self.module = torch.jit.load(str(path), map_location=device).eval()
        self._cuda = _CudaCall(torch.device(device)) if device.startswith("cuda") else None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self._cuda is not None:
            return self._cuda(self.module, batch)
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch, np.float32)))
        return out.detach().numpy().astype(np.float32, copy=False).reshape(len(batch), -1)


class _CudaCall:
    """One model's path through the GPU: pinned staging, its own stream, one lock.

    Pinned (page-locked) host memory is what lets a copy run asynchronously on a stream;
    allocating it costs far more than the copy, so the buffers persist and grow to the
    largest batch seen. The lock keeps concurrent callers (gRPC worker threads) from
    sharing a buffer or interleaving on the stream.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        # Loading the weights ran on the device's default stream; this stream must not
        # read them before that work is done.
        self.stream.wait_stream(torch.cuda.default_stream(device))
        self.lock = threading.Lock()
        self.inputs = _pinned(0)
        self.outputs = _pinned(0)

    def __call__(self, module: torch.jit.ScriptModule, batch: np.ndarray) -> np.ndarray:
        rows = len(batch)
        with self.lock, torch.inference_mode():
            if self.inputs.numel() < batch.size:
                self.inputs = _pinned(_grown(self.inputs.numel(), batch.size))
            staged = self.inputs[: batch.size].view(batch.shape)
            np.copyto(staged.numpy(), batch, casting="same_kind")
            with torch.cuda.stream(self.stream):
                x = staged.to(self.device, non_blocking=True)
                out = module(x).to(torch.float32).reshape(rows, -1)
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
