"""`compile: auto`, the default for LightGBM models: LightGBM's own predictor first, the same
forest compiled by lleaves once the model is busy.

Compiling costs seconds of a core (about 6 s for 200 trees of 31 leaves), so a version just
published serves at once on LightGBM, and a version loaded but seldom called never pays it.
Once the runtime has scored COMPILE_AFTER_ROWS rows it compiles the same model.txt into the
compile cache in a child process at the lowest CPU priority: lleaves builds its code in
Python, and in this process that would hold the GIL from the calls for those seconds. It
then loads the cached code, checks that it scores the latest batch served and the warm-up
rows exactly as LightGBM does, and from then on every call goes to it. An entry already in
the cache at load (a restart, a sibling process, an earlier version with the same bytes)
is used from the first call. Whatever fails on the way leaves the model on LightGBM, with
one log line: compiling is an optimisation, never a reason to fail a model.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from augur.serving.runtimes.compiled_runtime import CompiledTreeRuntime, has_entry
from augur.serving.runtimes.lightgbm_runtime import LightGBMRuntime

log = logging.getLogger(__name__)

# Rows scored before the forest is compiled: a busy model reaches it in seconds (1-row
# calls at a few hundred a second), a model a test or a canary touches now and then never.
COMPILE_AFTER_ROWS = 5_000
# Several times the compile of the largest forests we have timed (~6 s for 200 trees on a
# shared core); past it the child is killed and the model stays on LightGBM.
COMPILE_TIMEOUT_S = 600.0
_FAILED = "%s stays on LightGBM's predictor: compiling failed (%s)"


# Compiles running in child processes. At exit they are killed and waited for: a server
# that stops leaves no process behind (PR_SET_PDEATHSIG, set by the child once started,
# covers a server killed outright). `augur` leaves through os._exit, which runs no atexit
# hook: it calls stop_compiles itself.
_children: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()
_closing = False


def stop_compiles() -> None:
    """Kill and wait for the compiles still running; start no more."""
    global _closing
    with _CHILDREN_LOCK:
        _closing = True
        running = list(_children)
    for child in running:
        child.kill()
        child.wait()


atexit.register(stop_compiles)


class TieredTreeRuntime:
    device = "cpu"

    def __init__(self, path: Path, sha256: str, cache_dir: Path, threads: int = 1, label: str = ""):
        self._plain = LightGBMRuntime(path, threads)
        self.booster = self._plain.booster  # the model as LightGBM reads it, either tier
        self._source = (Path(path), sha256, Path(cache_dir), threads)
        self.label = label or str(path)
        self.compiled = False
        # called once the compiled forest scores the calls (models.py sets a gauge)
        self.on_compiled: Callable[[], None] | None = None
        self._rows = 0
        self._latest: np.ndarray | None = None
        self._start_lock = threading.Lock()
        self._started = False
        if has_entry(cache_dir, sha256):
            # compiled before: take it now. An entry of another build (lleaves, LLVM or the
            # CPU changed) is not this build's: the version compiles once busy, as if new.
            compiled = self._load(absent_ok=True)
            if compiled is not None:
                self._started = True
                self._take(compiled)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        # Until the swap: count rows and keep the latest batch for the parity check. The
        # swap sets `predict` on the instance, so compiled calls skip this method entirely.
        self._latest = batch
        self._rows += len(batch)
        if self._rows >= COMPILE_AFTER_ROWS and not self._started:
            self._start()
        return self._plain.predict(batch)

    def _start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            self._started = True
        thread = threading.Thread(target=self._compile, name="augur-compile", daemon=True)
        thread.start()

    def _compile(self) -> None:
        path, sha256, cache_dir, _ = self._source
        command = [
            sys.executable,
            "-m",
            "augur.serving.runtimes.compiled_runtime",
            str(path),
            sha256,
            str(cache_dir),
            str(os.getpid()),
        ]
        log.info("%s: compiling its forest with lleaves in a child process", self.label)
        with _CHILDREN_LOCK:
            if _closing:  # the process is exiting: it would never use the code
                return
            try:
                child = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                )
            except OSError as e:
                log.warning(_FAILED, self.label, e)
                return
            _children.add(child)
        try:
            _, err = child.communicate(timeout=COMPILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            err = f"still compiling after {COMPILE_TIMEOUT_S:.0f} s"
        finally:
            with _CHILDREN_LOCK:
                _children.discard(child)
        if child.returncode != 0:
            if _closing:  # killed by stop_compiles: nothing failed
                return
            why = (err.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
            log.warning(_FAILED, self.label, why)
            return
        self._take(self._load())

    def _load(self, absent_ok: bool = False) -> CompiledTreeRuntime | None:
        path, sha256, cache_dir, threads = self._source
        try:
            return CompiledTreeRuntime(path, sha256, cache_dir, threads, cached_only=True)
        except LookupError:
            if absent_ok:
                return None
            log.warning("%s stays on LightGBM's predictor: no compiled code", self.label)
            return None
        except Exception as e:  # any other failure means: keep LightGBM
            log.warning("%s stays on LightGBM's predictor: %s", self.label, e)
            return None

    def _take(self, compiled: CompiledTreeRuntime | None) -> None:
        """Score with `compiled` from the next call if it agrees with LightGBM exactly."""
        if compiled is None:
            return
        warm = np.zeros((8, self._plain.n_features), np.float32)
        warm[::2] = np.nan
        for batch in (warm, self._latest):
            if batch is None:
                continue
            ours, theirs = compiled.predict(batch), self._plain.predict(batch)
            if not np.array_equal(ours, theirs, equal_nan=True):
                log.warning(
                    "%s stays on LightGBM's predictor: lleaves' forest scores %d rows "
                    "differently (largest gap %g)",
                    self.label,
                    len(batch),
                    float(np.nanmax(np.abs(ours - theirs))),
                )
                return
        self.predict = compiled.predict  # type: ignore[method-assign]
        self._latest = None
        self.compiled = True
        log.info("%s: scoring with lleaves' compiled forest from now on", self.label)
        if self.on_compiled is not None:
            self.on_compiled()
