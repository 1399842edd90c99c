"""Load and warm a model version in a child process before the server loads it: a native
parser (LightGBM's, XGBoost's, CatBoost's, ONNX Runtime's, torch's, LLVM's, a plugin's)
that crashes on a malformed artifact takes down only the child, never the server. Every
kind goes through the same load_runtime as the server, so the child refuses what it would.

`vet(version)` runs `python -m augur.serving.probe <version dir>` and raises ProbeFailed
with what went wrong (the signal or exit code, a timeout, the child's own error). The child
checks the sha256, loads the artifact as the server would and scores a warm-up batch. It
isolates crashes and hangs, not malice: the child runs with the server's permissions.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from augur.modelrepo.repository import ModelRepository, ModelVersion
from augur.serving.runtimes import Runtime, load_runtime

# Long enough for `compile: lleaves` to compile a large forest in the child (the parent
# then reads the compiled code from the cache); a probe that takes longer is a hang.
TIMEOUT_S = 300.0
_WARM_UP_ROWS = 8
_OK = "ok sha256="  # the child's last stdout line when the version loaded and warmed up


class ProbeFailed(RuntimeError):
    pass


class WarmUpError(ValueError):
    """Scores of the wrong shape, or not finite, on the warm-up batch."""


def warm_up(runtime: Runtime, n_inputs: int, n_outputs: int) -> None:
    """Score a small batch with every other row all-missing (missing features are part of
    normal traffic); raise WarmUpError unless the scores are (rows, outputs) and finite."""
    batch = np.zeros((_WARM_UP_ROWS, n_inputs), np.float32)
    batch[::2] = np.nan
    out = runtime.predict(batch)
    expected = (_WARM_UP_ROWS, n_outputs)
    if out.shape != expected:
        raise WarmUpError(
            f"warm-up gave scores of shape {out.shape}; expected {expected} "
            f"({_WARM_UP_ROWS} rows, one column per output in model.yaml)"
        )
    if not np.isfinite(out).all():
        raise WarmUpError(
            f"warm-up gave {int((~np.isfinite(out)).sum())} non-finite score(s) of "
            f"{out.size} (NaN or inf) on a batch of zeros and missing values"
        )


def vet(
    version: ModelVersion, compile_cache: Path | None = None, timeout_s: float = TIMEOUT_S
) -> float:
    """Load and warm `version` in a child process; return the seconds it took. Raise
    ProbeFailed if the child crashed, exited with an error, outlived `timeout_s`, or loaded
    bytes other than those `version.metadata` records."""
    command = [sys.executable, "-m", "augur.serving.probe", str(version.path)]
    if compile_cache is not None:
        command.append(str(compile_cache))
    began = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=timeout_s
        )
    except subprocess.TimeoutExpired:  # run() has killed the child
        raise ProbeFailed(
            f"loading and warming {version.artifact} in a probe process took over "
            f"{timeout_s:.0f}s; killed it"
        ) from None
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise ProbeFailed(
            f"the probe process that loaded {version.artifact} {_exit(done.returncode)}"
            f"{_last_words(done.stderr)}"
        )
    lines = done.stdout.strip().splitlines()
    loaded = lines[-1].removeprefix(_OK) if lines and lines[-1].startswith(_OK) else ""
    if loaded != version.metadata.get("sha256"):
        raise ProbeFailed(
            f"the probe process loaded {version.artifact} with sha256 {loaded or '?'}, "
            f"not metadata.json's {version.metadata.get('sha256')}: changed while probed"
        )
    return took


def _exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} (exit {128 - returncode})"
    return f"exited with {returncode}"


def _last_words(stderr: str) -> str:
    """The child's last lines: the parser's own complaint (LightGBM prints the same warning
    once per tree, so repeats are dropped) or the error main() printed."""
    lines = list(dict.fromkeys(line.strip() for line in stderr.splitlines() if line.strip()))
    said = " | ".join(lines[-2:])
    return f": {said[-400:]}" if said else ""


def main(argv: list[str]) -> int:
    """In the child: load the version at argv[0] (compile cache argv[1], if given) and warm
    it up; print its sha256 and exit 0, or print the error and exit 1. A native crash ends
    this process by its signal, which the parent reports."""
    version_dir = Path(argv[0])
    compile_cache = Path(argv[1]) if len(argv) > 1 else None
    try:
        version = ModelRepository(version_dir.parent.parent).resolve(
            version_dir.parent.name, version_dir.name
        )
        runtime = load_runtime(version, 1, compile_cache)
        warm_up(runtime, len(version.features), len(version.spec.outputs))
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"{_OK}{version.metadata.get('sha256')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
