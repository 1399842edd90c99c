"""ONNX models through ONNX Runtime: the CPU execution provider, or CUDA's when model.yaml
says `device: cuda` and this onnxruntime build has it. The graph must take one float32
(rows, features) input as wide as the model's feature list; anything else is refused at
load, naming the graph's inputs. Not a converter: models arrive as .onnx files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

_FLOAT = "tensor(float)"


class OnnxRuntime:
    def __init__(
        self, path: Path, device: str = "cpu", threads: int = 1, features: tuple[str, ...] = ()
    ):
        self.threads = threads
        options = ort.SessionOptions()
        # one intra-op pool of `threads`, no inter-op pool, no spinning: a spinning pool
        # holds its cores after every call and slows the other runtimes in the process
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: ORT's warnings are not Augur's log
        self.session = ort.InferenceSession(str(path), options, providers=_providers(device))
        self.device = device if device.startswith("cuda") else "cpu"
        self.input = _check_input(self.session, path, features)
        self.output = self.session.get_outputs()[0].name

    def predict(self, batch: np.ndarray) -> np.ndarray:
        (scores,) = self.session.run([self.output], {self.input: batch})
        return np.asarray(scores, np.float32).reshape(len(batch), -1)


def _providers(device: str) -> list:
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(
            f"device {device!r} requested but this onnxruntime has no CUDA execution "
            f"provider (has {', '.join(ort.get_available_providers())}); install "
            f"onnxruntime-gpu or set device: cpu in model.yaml"
        )
    index = device.partition(":")[2] or "0"
    return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]


def _check_input(session: ort.InferenceSession, path: Path, features: tuple[str, ...]) -> str:
    inputs = session.get_inputs()
    shown = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
    width = inputs[0].shape[-1] if inputs and len(inputs[0].shape) == 2 else None
    if (
        len(inputs) != 1
        or inputs[0].type != _FLOAT
        or len(inputs[0].shape) != 2
        or (isinstance(width, int) and width != len(features))
    ):
        raise RuntimeError(
            f"{path}: the graph's inputs ({shown}) do not match the model's features: "
            f"Augur feeds one float32 input of shape [rows, {len(features)}] "
            f"({', '.join(features[:4])}{', ...' if len(features) > 4 else ''})"
        )
    if not session.get_outputs() or session.get_outputs()[0].type != _FLOAT:
        raise RuntimeError(f"{path}: the graph's first output must be a float32 tensor")
    return inputs[0].name
