"""Load and warm a model version in a child process before the server loads it: a native
parser (LightGBM's, XGBoost's, CatBoost's, ONNX Runtime's, torch's, LLVM's, a plugin's)
that crashes on a malformed artifact takes down only the child, never the server. Every
kind goes through the same load_runtime as the server, so the child refuses what it would.

`vet(version)` runs `python -m augur.serving.probe <version dir>` and raises ProbeFailed
with what went wrong (the signal or exit code, a timeout, the child's own error). The child
checks the sha256, loads the artifact as the server would and scores a warm-up batch. It
isolates crashes and hangs, not malice: the child runs with the server's permissions.

`vet_once(version)` is what servers call: a probe that passed leaves a verdict in the
compile cache (<model repository>/.compiled/vetted by default, shared by every replica that
mounts the repository), keyed by everything the child's load depended on: the version's
files, how model.yaml says to load them, the interpreter, the installed packages and
Augur's runtimes. The same bytes on the same software load the same way, so a restart, a
rolling update or a second process loads a vetted version without a child: a torch
model's probe is most of its start (a fresh interpreter importing torch.export).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from functools import cache
from pathlib import Path

import numpy as np

from augur.modelrepo.repository import ModelRepository, ModelVersion
from augur.serving.runtimes import COMPILE_CACHE, Runtime, load_runtime

log = logging.getLogger(__name__)

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


def vet_once(
    version: ModelVersion, compile_cache: Path | None = None, timeout_s: float = TIMEOUT_S
) -> float | None:
    """vet(), unless a probe of this version passed before with the same files and software:
    then None, at once. A pass is recorded for the next time; a failure never is, so a bad
    version is probed (and refused) wherever it is loaded."""
    verdict = _verdict_path(version, compile_cache)
    if verdict is not None and verdict.is_file():
        log.info(
            "%s@%s passed a probe before, same files and software: loading it without one",
            version.spec.name,
            version.version,
        )
        return None
    took = vet(version, compile_cache, timeout_s)
    if verdict is not None:
        _record(verdict, version)
    return took


def _verdict_path(version: ModelVersion, compile_cache: Path | None) -> Path | None:
    """Where a pass for exactly this version, loaded this way on this software, is kept;
    None when the version's files cannot be read (the probe then says why)."""
    digest = hashlib.sha256(_software().encode())
    spec = version.spec
    digest.update(repr((spec.kind, spec.compile, spec.device, spec.outputs)).encode())
    try:
        for path in sorted(version.path.iterdir()):
            digest.update(path.name.encode() + b"\0")
            if path == version.artifact:
                # load_runtime refuses bytes other than these: no need to read them all
                digest.update(str(version.metadata.get("sha256")).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
            else:
                return None  # a folder in a version is refused by load_runtime; let it say so
    except OSError:
        return None
    cache_dir = compile_cache or version.path.parent.parent / COMPILE_CACHE
    return cache_dir / "vetted" / f"{digest.hexdigest()}.json"


@cache
def _software() -> str:
    """The interpreter, every installed distribution's name and version (a framework's
    upgrade changes its parser) and the source of Augur's runtimes and of this probe."""
    installed = []
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        installed += [n for n in names if n.endswith((".dist-info", ".egg-info"))]
    ours = Path(__file__).parent
    sources = [ours / "probe.py", *sorted((ours / "runtimes").glob("*.py"))]
    code = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
    return "\n".join([sys.version, platform.machine(), code, *sorted(installed)])


def _record(verdict: Path, version: ModelVersion) -> None:
    """Write the pass atomically; a read-only cache only costs the next start a probe."""
    tmp = verdict.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    what = {"model": version.spec.name, "version": version.version, "vetted_at": time.time()}
    try:
        verdict.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(what | {"sha256": version.metadata.get("sha256")}))
        os.replace(tmp, verdict)
    except OSError as e:
        log.info("%s@%s passed its probe; not recorded (%s)", what["model"], what["version"], e)
        with contextlib.suppress(OSError):  # never written, or its folder is not one
            tmp.unlink()


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
