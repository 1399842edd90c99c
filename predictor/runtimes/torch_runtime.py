"""PyTorch models saved as TorchScript: loaded without unpickling arbitrary Python code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class TorchRuntime:
    def __init__(self, path: Path, device: str = "cpu", threads: int = 1):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"{path}: device {device!r} requested but no CUDA device is "
                f"available; set device: cpu in model.yaml"
            )
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        self.device = device
        self.module = torch.jit.load(str(path), map_location=device).eval()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
            if self.device != "cpu":
                x = x.to(self.device, non_blocking=True)
            out = self.module(x)
        return out.detach().to("cpu").numpy().astype(np.float32, copy=False).reshape(len(batch), -1)
