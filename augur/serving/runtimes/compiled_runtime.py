"""LightGBM models compiled to native code by lleaves (`compile: lleaves` in model.yaml).

Compiling takes seconds (about 7 s for 200 trees of 31 leaves), so the object code is kept
in a cache and a later load, restart or sibling process reads it in milliseconds. An entry
is named for the artifact's sha256, what built it (lleaves, llvmlite, host CPU, flags) and
its own sha256, so a changed model, an upgrade or a damaged file never loads stale code;
an object file cut short (a full disk) is refused too, since LLVM's loader aborts the
process on one.
Scoring only: training, SHAP and the model file's format stay LightGBM's. Run as a module,
it fills the cache for one model (tiered_runtime.py compiles `compile: auto` models so).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

INSTALL = "pip install lleaves==1.3.0 llvmlite==0.44.0"
# lleaves' defaults except where named: fp64 so that splits compare exactly as LightGBM's
# double thresholds do, and the objective (e.g. the binary sigmoid) applied like predict()
FLAGS = {"raw_score": False, "use_fp64": True, "fblocksize": 34, "fcodemodel": "large"}
# Below this many rows per thread, starting threads costs more than the trees
# (lleaves splits rows over a thread pool of its own; it does not use OpenMP).
ROWS_PER_THREAD = 64
# lleaves' entry point: (rows, scores, first row, end row), fp64 as FLAGS compile it.
_FOREST = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32)


class CompiledTreeRuntime:
    device = "cpu"

    def __init__(
        self,
        path: Path,
        sha256: str,
        cache_dir: Path,
        threads: int = 1,
        cached_only: bool = False,
    ):
        """`cached_only`: load the cache's code or raise LookupError, never compile here."""
        try:
            import lleaves
        except ImportError as e:
            raise RuntimeError(
                f"model.yaml asks for compile: lleaves but lleaves cannot be imported ({e}); "
                f"install it with `{INSTALL}` or remove compile from model.yaml"
            ) from None
        self.threads = threads
        self.model = lleaves.Model(model_file=str(path))
        self.n_features = self.model.num_feature()
        self.cache_hit = False  # set by _load: whether the object code came from the cache
        self._load(Path(cache_dir) / sha256, cached_only)
        self.outputs = self.model.num_model_per_iteration()
        # The compiled forest, called with plain addresses: lleaves' own predict() builds two
        # ctypes pointers and checks its input's type on every call, some 10 us of a 1-row
        # call whose trees take 10 us. Same function, same arguments as its one-thread path.
        address = ctypes.cast(self.model._c_entry_func, ctypes.c_void_p).value
        self._forest = _FOREST(address)
        # One row, the common call, through buffers whose addresses are taken once: the
        # conversions and address lookups of the general path cost 2-3 us, more than a
        # small forest's walk. A second thread meanwhile takes the general path.
        self._row = np.zeros((1, self.n_features), np.float64)
        self._scores = np.zeros((1, self.outputs), np.float64)
        self._row_at, self._scores_at = self._row.ctypes.data, self._scores.ctypes.data
        self._one = threading.Lock()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n == 1 and batch.shape == self._row.shape and self._one.acquire(blocking=False):
            try:
                self._row[:] = batch
                self._forest(self._row_at, self._scores_at, 0, 1)
                return self._scores.astype(np.float32)
            finally:
                self._one.release()
        if self.threads > 1 and n >= self.threads * ROWS_PER_THREAD:
            scores = self.model.predict(batch, n_jobs=self.threads)
            return np.asarray(scores, np.float32).reshape(n, -1)
        if batch.ndim != 2 or batch.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got {batch.shape}")
        data = np.ascontiguousarray(batch, np.float64)
        scores = np.empty((n, self.outputs), np.float64)
        self._forest(
            data.__array_interface__["data"][0], scores.__array_interface__["data"][0], 0, n
        )
        return scores.astype(np.float32)

    def _load(self, entry_dir: Path, cached_only: bool) -> None:
        build = _build_key()
        for cached in sorted(entry_dir.glob(f"{build}-*.o")):
            if _intact(cached):
                self.model.compile(cache=str(cached), **FLAGS)
                self.cache_hit = True
                return
            log.warning("compile cache: %s does not match its checksum; ignoring it", cached)
            with contextlib.suppress(OSError):  # a read-only cache keeps it; it stays unused
                cached.unlink()
        if cached_only:
            raise LookupError(f"no compiled code for {self.model.model_file} in {entry_dir}")
        try:
            entry_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".compile-", dir=entry_dir))
        except OSError as e:
            log.warning("compile cache %s is not writable (%s); compiling in memory", entry_dir, e)
            self.model.compile(**FLAGS)
            return
        try:
            # lleaves writes the object file as compilation finishes; renaming it into place
            # under its checksum means a reader sees a whole entry or none
            written = staging / "object.o"
            began = time.perf_counter()
            self.model.compile(cache=str(written), **FLAGS)
            data = written.read_bytes() if written.exists() else b""
            if not _whole_object(data):
                # lleaves writes the file from inside an LLVM callback, which swallows any
                # error: a full disk leaves a short file, which must not become an entry
                log.warning(
                    "compile cache: lleaves wrote an incomplete object file (%d bytes; disk "
                    "full?); %s is compiled but not cached",
                    len(data),
                    self.model.model_file,
                )
                return
            os.replace(written, entry_dir / f"{build}-{hashlib.sha256(data).hexdigest()}.o")
            log.info(
                "compiled %s with lleaves in %.1fs; cached in %s",
                self.model.model_file,
                time.perf_counter() - began,
                entry_dir,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _build_key() -> str:
    """What the object code depends on besides the model: compiler versions, target, flags."""
    import llvmlite
    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot read this CPU's features; lleaves then targets none
        features = ""
    target = "|".join(
        (
            llvmlite.__version__,
            llvm.get_process_triple(),
            llvm.get_host_cpu_name(),
            features,
            repr(sorted(FLAGS.items())),
        )
    )
    digest = hashlib.sha256(target.encode()).hexdigest()[:16]
    return f"lleaves{metadata.version('lleaves')}-{digest}"


def _intact(path: Path) -> bool:
    """Whether the file still holds the bytes whose sha256 ends its name, and those are a
    whole object file (an entry cut short before it was named would pass its checksum)."""
    try:
        data = path.read_bytes()
    except OSError:  # removed by another process since the listing
        return False
    return hashlib.sha256(data).hexdigest() == path.stem.rsplit("-", 1)[-1] and _whole_object(data)


_ELF64_LE = b"\x7fELF\x02\x01"


def _whole_object(data: bytes) -> bool:
    """Whether `data` looks like a complete object file. For 64-bit little-endian ELF (Linux
    on x86-64 and arm64): LLVM writes the section header table last, so it must end exactly
    where the file does. Other formats are only checked for being non-empty."""
    if not data.startswith(_ELF64_LE):
        return bool(data) and not data.startswith(b"\x7fELF")
    if len(data) < 64:  # shorter than the ELF header itself
        return False
    (table_at,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, entries = struct.unpack_from("<HH", data, 0x3A)
    return table_at + entry_size * entries == len(data)


def has_entry(cache_dir: Path, sha256: str) -> bool:
    """Whether the cache may hold code for this model (any build; loading checks which),
    answered without importing lleaves."""
    return any((Path(cache_dir) / sha256).glob("*.o"))


def main(argv: list[str]) -> int:
    """`python -m augur.serving.runtimes.compiled_runtime MODEL_TXT SHA256 CACHE PARENT_PID`:
    compile into the cache at the lowest CPU priority; exit 0 once an entry is there, 3 if
    the cache could not keep one. Dies with the process that started it."""
    path, sha256, cache, parent = Path(argv[0]), argv[1], Path(argv[2]), int(argv[3])
    os.nice(19)  # the serving process's calls come first
    with contextlib.suppress(OSError, AttributeError):  # Linux: die with the parent
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import lleaves  # noqa: F401 - only whether it can be
    except ImportError as e:
        print(f"lleaves cannot be imported ({e}); install it with `{INSTALL}`", file=sys.stderr)
        return 3
    entry_dir = cache / sha256
    try:
        entry_dir.mkdir(parents=True, exist_ok=True)
        lock = open(entry_dir / ".lock", "w")  # noqa: SIM115 - held through the compile
    except OSError as e:
        print(f"compile cache {entry_dir} is not writable: {e}", file=sys.stderr)
        return 3
    # sibling processes serving the same model wait for one compile, then load its entry
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runtime = CompiledTreeRuntime(path, sha256, cache)
    if not runtime.cache_hit and not any(entry_dir.glob(f"{_build_key()}-*.o")):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
