"""The runtime of a `kind: remote` model: its assembled batch scored on other Open Inference
Protocol servers (backends.py), with its local fallback model last. Loading opens channels
only: a backend that is down at start is the breaker's business, not a load failure."""

from __future__ import annotations

import numpy as np

from augur.modelrepo.repository import ModelVersion
from augur.serving.backends import BackendChain


class RemoteRuntime:
    device = "remote"

    def __init__(self, chain: BackendChain) -> None:
        self.chain = chain

    def predict(self, batch: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """float32 (rows, features) -> float32 (rows, outputs), within `deadline`
        (monotonic; None: each attempt within remote.attempt_timeout_ms)."""
        return self.chain.infer(batch, deadline)


def load_remote(version: ModelVersion, fallback=None) -> RemoteRuntime:
    """`fallback`: the loaded local model (augur.serving.models.ServingModel) that answers
    when no backend can; it takes the remote columns it needs, by name."""
    spec = version.spec
    assert spec.remote is not None  # parse_spec requires it for kind remote
    local = None
    if fallback is not None:
        columns = list(spec.remote.features)
        missing = [f for f in fallback.version.features if f not in columns]
        if missing:
            raise ValueError(
                f"fallback {fallback.name} takes {', '.join(missing)}, which remote.features "
                f"lacks; its inputs must be among the remote model's"
            )
        index = np.array([columns.index(f) for f in fallback.version.features], np.intp)
        if len(fallback.version.spec.outputs) != len(spec.outputs):
            raise ValueError(
                f"fallback {fallback.name} has {len(fallback.version.spec.outputs)} outputs; "
                f"the remote model declares {len(spec.outputs)}"
            )

        def local(batch: np.ndarray) -> np.ndarray:
            return fallback.infer(np.ascontiguousarray(batch[:, index]), None)

    return RemoteRuntime(BackendChain(spec.name, spec.remote, len(spec.outputs), local))
