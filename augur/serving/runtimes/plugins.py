"""Runtimes from installed packages: an entry point in group `augur.runtimes` whose name is
a model.yaml `kind`. The operator installs the package (pip); the model repository only
names the kind, so a repository still carries data, never code. Not a sandbox: a plugin
runs with the server's permissions, and a crash in one is caught by the probe process.

The interface, documented in docs/runtimes.md: the entry point is a callable

    load(folder: Path, inputs: tuple[str, ...], threads: int, device: str) -> model

where `folder` is the version's folder (its artifact and metadata.json) and `inputs` the
feature names in batch order; `model.predict(batch)` takes float32 (rows, len(inputs))
with NaN for missing values and returns (rows, outputs); `model.outputs` names the
outputs and `model.threads` says how many threads a call uses.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

import numpy as np

from augur.modelrepo.repository import ModelVersion
from augur.modelrepo.spec import PLUGIN_GROUP


class PluginModel(Protocol):
    outputs: tuple[str, ...]
    threads: int

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


class PluginRuntime:
    """A plugin's model behind the Runtime interface: float32 (rows, outputs) out, and an
    error that names the plugin when its predict raises."""

    def __init__(self, kind: str, model: PluginModel, device: str):
        self.kind = kind
        self.model = model
        self.device = getattr(model, "device", device)
        self.threads = model.threads
        self.outputs = tuple(model.outputs)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        try:
            scores = self.model.predict(batch)
        except Exception as e:
            raise RuntimeError(f"runtime plugin {self.kind!r} failed to predict: {e}") from e
        return np.asarray(scores, np.float32).reshape(len(batch), -1)


def load_plugin(version: ModelVersion, threads: int) -> PluginRuntime:
    spec = version.spec
    found = [ep for ep in entry_points(group=PLUGIN_GROUP) if ep.name == spec.kind]
    if not found:
        raise RuntimeError(
            f"kind {spec.kind!r} names no installed runtime plugin (entry point group "
            f"{PLUGIN_GROUP}); pip install the package that provides it"
        )
    try:
        load = found[0].load()
        model = load(Path(version.path), version.features, threads, spec.device)
    except Exception as e:
        raise RuntimeError(
            f"runtime plugin {spec.kind!r} ({found[0].value}) failed to load: "
            f"{type(e).__name__}: {e}"
        ) from e
    missing = [a for a in ("predict", "outputs", "threads") if not hasattr(model, a)]
    if missing:
        raise RuntimeError(
            f"runtime plugin {spec.kind!r} returned a {type(model).__name__} without "
            f"{', '.join(missing)}; see docs/runtimes.md for the interface"
        )
    if len(tuple(model.outputs)) != len(spec.outputs):
        raise RuntimeError(
            f"runtime plugin {spec.kind!r} gives outputs {tuple(model.outputs)} but "
            f"model.yaml declares {spec.outputs}"
        )
    return PluginRuntime(spec.kind, model, spec.device)
