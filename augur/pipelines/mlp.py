"""The PyTorch model family `augur train` builds: an MLP that carries its own preprocessing.

Imputation, a signed log (features are heavy-tailed counts and amounts) and
standardisation live inside the module, so the served file (a torch.export program) is
self-contained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


class TabularMLP(nn.Module):
    def __init__(
        self, fill: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, hidden: Sequence[int]
    ):
        super().__init__()
        self.register_buffer("fill", fill)
        self.register_buffer("center", center)
        self.register_buffer("scale", scale)
        layers: list[nn.Module] = []
        width = len(fill)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isnan(x), self.fill, x)
        x = torch.sign(x) * torch.log1p(torch.abs(x))
        return self.net((x - self.center) / self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def fit_mlp(
    x: np.ndarray,
    y: np.ndarray,
    *,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 8,
    batch_size: int = 512,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> TabularMLP:
    torch.manual_seed(seed)
    fill = np.nanmedian(x, axis=0)
    fill = np.where(np.isnan(fill), 0.0, fill).astype(np.float32)
    filled = np.where(np.isnan(x), fill, x)
    logged = np.sign(filled) * np.log1p(np.abs(filled))
    center = logged.mean(0).astype(np.float32)
    scale = logged.std(0).astype(np.float32)
    scale[scale < 1e-6] = 1.0
    model = TabularMLP(
        torch.from_numpy(fill), torch.from_numpy(center), torch.from_numpy(scale), hidden
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).reshape(-1, 1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(epochs), desc="torch mlp", unit="epoch", disable=not progress):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model.logits(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
    return model.eval()


def export_mlp(model: nn.Module, example: np.ndarray, path: Path) -> Path:
    """Save `model` as a torch.export program (model.pt2) that takes any number of rows:
    weights and graph only, loaded without running Python code."""
    rows = torch.export.Dim("rows", min=1, max=1 << 20)
    sample = torch.from_numpy(np.ascontiguousarray(example[:2], np.float32))
    program = torch.export.export(model.eval(), (sample,), dynamic_shapes=({0: rows},))
    torch.export.save(program, str(path))
    return path
