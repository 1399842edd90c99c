"""Seldon MLServer, a real Open Inference Protocol server nobody here wrote, serving a LightGBM
model file: installed once into a virtualenv of its own (.venv-mlserver, reused while its pins
are unchanged), started as a process on free loopback ports, stopped (or killed) by its user.
The benchmark's MLServer-alone baseline and the remote-backend tests both start it from here.

    python -m bench.mlserver      (build the virtualenv now; the harness and tests build it
                                   on first use otherwise)

The pins: mlserver 1.7.1 starts only with uvloop 0.21 beside it (0.23 fails with "no current
event loop"); its dependencies (pydantic, fastapi, ...) stay out of Augur's own environment.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from augur.features.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-mlserver"
PACKAGES = ("mlserver==1.7.1", "mlserver-lightgbm==1.7.1", "uvloop==0.21.0")
_INSTALL_TIMEOUT_S = 900
_WANTED = "\n".join(PACKAGES)
_installing: threading.Thread | None = None
_failed: list[str] = []  # why the background install failed


class MLServerUnavailable(Exception):
    """The virtualenv could not be built (no index, no wheels): one line saying why."""


def install_in_background(venv: Path | None = None) -> None:
    """Start building the virtualenv (minutes on a fresh clone) while other work runs;
    `mlserver_bin` waits for it."""
    global _installing
    venv = venv or VENV
    if _installing is not None or _installed(venv):
        return

    def install() -> None:
        try:
            _install(venv)
        except MLServerUnavailable as e:
            _failed.append(str(e))

    _installing = threading.Thread(target=install, name="mlserver-install", daemon=True)
    _installing.start()


def mlserver_bin(venv: Path | None = None) -> Path:
    """The `mlserver` command of the cached virtualenv (VENV unless `venv`), built on first
    use; raises MLServerUnavailable, saying why in one line, only if installing fails."""
    venv = venv or VENV
    if _installing is not None:
        _installing.join()
    if _failed:
        raise MLServerUnavailable(_failed[0])
    if not _installed(venv):
        _install(venv)
    return venv / "bin" / "mlserver"


def _installed(venv: Path) -> bool:
    stamp = venv / ".installed"
    return stamp.is_file() and stamp.read_text() == _WANTED


def _install(venv: Path) -> None:
    """Build `venv` under a lock beside it: the test session's background install and a
    benchmark run started meanwhile must not both rebuild the same folder."""
    what = f"cannot install MLServer ({' '.join(PACKAGES)})"
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        lock = open(venv.with_name(venv.name + ".lock"), "w")  # noqa: SIM115 (held below)
    except OSError as e:
        raise MLServerUnavailable(f"{what}: {e}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed(venv):  # built by whoever held the lock before
            return
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *PACKAGES],
        ]
        for step in steps:
            try:
                done = subprocess.run(
                    step, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                raise MLServerUnavailable(f"{what}: {e}") from None
            if done.returncode != 0:
                said = [ln.strip() for ln in (done.stderr or done.stdout).splitlines()]
                last = next((ln for ln in reversed(said) if ln), "no output")
                raise MLServerUnavailable(f"{what}: {' '.join(step[2:4])} failed: {last}")
        (venv / ".installed").write_text(_WANTED)


class MLServer:
    """`mlserver start` on a folder holding one LightGBM model, served as `name`, in the
    server process itself (`parallel_workers: 0`, one core, as Augur's one process)."""

    START_TIMEOUT_S = 90.0

    def __init__(self, folder: Path, name: str, model_txt: Path) -> None:
        self.folder = folder
        self.name = name
        self.grpc_port = free_port()
        self.http_port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "http_port": self.http_port,
                    "grpc_port": self.grpc_port,
                    "metrics_port": free_port(),
                    "parallel_workers": 0,  # score in the server process: one core each
                    "load_models_at_startup": True,
                }
            )
        )
        model_dir = folder / name
        model_dir.mkdir(exist_ok=True)
        (model_dir / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "implementation": "mlserver_lightgbm.LightGBMModel",
                    "parameters": {"uri": str(model_txt)},
                }
            )
        )
        self.process: subprocess.Popen | None = None
        self.log = folder / "mlserver.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> MLServer:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(mlserver_bin()), "start", str(self.folder)],
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self) -> None:
        """Until the model answers ModelReady over gRPC (or the process dies: its log says)."""
        from augur.api.oip import open_inference_pb2 as oip
        from augur.api.oip import open_inference_pb2_grpc as oip_grpc

        until = time.monotonic() + self.START_TIMEOUT_S
        with grpc.insecure_channel(self.address) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < until:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"mlserver exited: {self.log.read_text()[-2000:]}")
                try:
                    if stub.ModelReady(oip.ModelReadyRequest(name=self.name), timeout=1).ready:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(
            f"mlserver not ready in {self.START_TIMEOUT_S}s: {self.log.read_text()[-2000:]}"
        )

    def kill(self) -> None:
        """SIGKILL: a backend that dies without a goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main() -> None:
    try:
        print(f"MLServer ready: {mlserver_bin()}")
    except MLServerUnavailable as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
