"""Model versions made for lifecycle tests: real LightGBM files and TorchScript modules that
misbehave on purpose (fail, stall, drift, hang, or crash the parser), published like any
other version."""

from __future__ import annotations

import re
from pathlib import Path

import lightgbm as lgb
import numpy as np
import torch

from augur.modelrepo.repository import ModelRepository, ModelVersion


def publish_lightgbm_variant(
    repo: ModelRepository, name: str, seed: int, tmp: Path
) -> ModelVersion:
    """A real LightGBM model over the same inputs whose scores differ from v1's."""
    base = repo.resolve(name, "v1")
    n_inputs = len(base.features)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3_000, n_inputs)).astype(np.float32)
    y = (x[:, seed % n_inputs] + rng.normal(size=3_000) > 0).astype(np.float32)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "seed": seed, "num_leaves": 7},
        lgb.Dataset(x, y),
        num_boost_round=20,
    )
    path = tmp / f"variant-{seed}.txt"
    booster.save_model(str(path))
    return repo.publish(base.spec, path, _metadata(base))


class _Constant(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1), self.value)


class _FailsOnTraffic(torch.nn.Module):
    """Passes warm-up (no positive request feature there) and fails on real traffic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, -1] > 0).any()):
            raise RuntimeError("deliberately broken version")
        return torch.zeros((x.shape[0], 1))


class _Slow(torch.nn.Module):
    def __init__(self, width: int = 768, rounds: int = 120):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(width, width) / width**0.5)
        self.rounds = rounds
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ones((x.shape[0], self.width))
        for _ in range(self.rounds):
            y = torch.tanh(y @ self.weight)
        return torch.sigmoid(y[:, :1]) * 0.0 + 0.01


class _Hangs(torch.nn.Module):
    """Never returns: its warm-up spins until something kills it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spins = torch.zeros(1)
        while bool(spins.sum() >= 0):  # float32 stops growing at 2**24, and stays >= 0
            spins = spins + 1
        return torch.zeros((x.shape[0], 1)) + spins


BAD = {
    "constant": lambda: _Constant(0.9),
    "failing": _FailsOnTraffic,
    "slow": _Slow,
    "hangs": _Hangs,
}


def _truncated(text: str) -> str:
    return text[: int(len(text) * 0.6)]  # a copy cut short: LightGBM's parser segfaults


def _wrong_tree_sizes(text: str) -> str:
    # The header's byte size of each tree, which LightGBM trusts to split the file: a first
    # tree 50 times its size swallows the others, and the parser aborts.
    return re.sub(r"tree_sizes=(\d+)", lambda m: f"tree_sizes={int(m[1]) * 50}", text, count=1)


BREAKS = {"truncated": _truncated, "tree_sizes": _wrong_tree_sizes}


def publish_broken_lightgbm(repo: ModelRepository, name: str, how: str, tmp: Path) -> ModelVersion:
    """v1's model.txt broken `how` (BREAKS), published as the repository publishes any
    version: its metadata's sha256 matches the broken bytes."""
    base = repo.resolve(name, "v1")
    path = tmp / f"broken-{how}.txt"
    path.write_text(BREAKS[how](base.artifact.read_text()))
    return repo.publish(base.spec, path, _metadata(base))


def publish_torch(repo: ModelRepository, name: str, kind: str, tmp: Path) -> ModelVersion:
    base = repo.resolve(name, "v1")
    path = tmp / f"{kind}.pt"
    torch.jit.script(BAD[kind]()).save(str(path))
    return repo.publish(base.spec, path, _metadata(base))


def _metadata(base: ModelVersion) -> dict:
    keep = ("features", "feature_dtypes", "request_features", "outputs")
    return {k: base.metadata[k] for k in keep if k in base.metadata}
