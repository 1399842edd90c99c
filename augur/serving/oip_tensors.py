"""Open Inference Protocol tensors <-> numpy: the one table of datatypes, and reading or
writing a tensor in either encoding (typed `contents` or row-major `raw_*_contents`). Used by
the OIP service (oip.py) and by remote backends (backends.py); not the meaning of any input.
"""

from __future__ import annotations

import struct

import numpy as np

from augur.api.oip import open_inference_pb2 as oip
from augur.serving.errors import invalid, shown

# datatype -> (numpy dtype, the InferTensorContents field that carries it)
DATATYPES: dict[str, tuple[np.dtype, str]] = {
    "BOOL": (np.dtype(np.bool_), "bool_contents"),
    "INT8": (np.dtype(np.int8), "int_contents"),
    "INT16": (np.dtype(np.int16), "int_contents"),
    "INT32": (np.dtype(np.int32), "int_contents"),
    "INT64": (np.dtype(np.int64), "int64_contents"),
    "UINT8": (np.dtype(np.uint8), "uint_contents"),
    "UINT16": (np.dtype(np.uint16), "uint_contents"),
    "UINT32": (np.dtype(np.uint32), "uint_contents"),
    "UINT64": (np.dtype(np.uint64), "uint64_contents"),
    "FP32": (np.dtype(np.float32), "fp32_contents"),
    "FP64": (np.dtype(np.float64), "fp64_contents"),
    "BYTES": (np.dtype(object), "bytes_contents"),
}
# Feast value types -> the datatype a model input of that type is described as
FEAST_DATATYPES = {
    "Int32": "INT64",
    "Int64": "INT64",
    "UnixTimestamp": "INT64",
    "Float32": "FP32",
    "Float64": "FP64",
    "Bool": "BOOL",
}
_LENGTH = struct.Struct("<I")


def rows_of(tensor, field: str) -> int:
    """The first dimension of a tensor's shape (its rows); INVALID_ARGUMENT without one."""
    shape = list(tensor.shape)
    if not shape or any(d < 0 for d in shape):
        raise invalid(f"{field}.shape: {shape}; expected [rows] or [rows, columns], each >= 0")
    return int(shape[0])


def read_tensor(tensor, raw: bytes | None, field: str) -> np.ndarray:
    """An input or output tensor's elements, shaped as it says. `raw`: its entry of
    raw_*_contents when the message carries them (None: its typed contents)."""
    datatype = tensor.datatype
    known = DATATYPES.get(datatype)
    if known is None:
        raise invalid(
            f"{field}.datatype: {shown(datatype)!r} is not an OIP datatype; "
            f"expected one of {', '.join(DATATYPES)}"
        )
    dtype, contents_field = known
    shape = [int(d) for d in tensor.shape]
    if any(d < 0 for d in shape):
        raise invalid(f"{field}.shape: {shape}; dimensions must be >= 0")
    size = int(np.prod(shape)) if shape else 1
    if raw is not None:
        if datatype == "BYTES":
            values = np.array(_split_bytes(raw, field), dtype=object)
        else:
            if len(raw) != size * dtype.itemsize:
                raise invalid(
                    f"{field}: raw contents of {len(raw)} bytes; shape {shape} of {datatype} "
                    f"needs {size * dtype.itemsize}"
                )
            values = np.frombuffer(raw, dtype.newbyteorder("<"))
    else:
        found = getattr(tensor.contents, contents_field)
        values = (
            np.array(list(found), dtype=object) if datatype == "BYTES" else np.asarray(found, dtype)
        )
    if len(values) != size:
        raise invalid(f"{field}: {len(values)} elements; shape {shape} holds {size}")
    return values.reshape(shape)


def _split_bytes(raw: bytes, field: str) -> list[bytes]:
    """BYTES elements from raw contents: each a 4-byte little-endian length, then the bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise invalid(f"{field}: raw BYTES contents end inside an element's length")
        (length,) = _LENGTH.unpack_from(raw, at)
        at += 4
        if at + length > len(raw):
            raise invalid(f"{field}: raw BYTES element of {length} bytes runs past the end")
        out.append(raw[at : at + length])
        at += length
    return out


def write_output(
    response: oip.ModelInferResponse, name: str, values: np.ndarray, raw: bool
) -> None:
    """Append an FP32 output tensor to `response`, raw or typed."""
    values = np.ascontiguousarray(values, np.float32)
    tensor = response.outputs.add(name=name, datatype="FP32", shape=values.shape)
    if raw:
        response.raw_output_contents.append(values.tobytes())
    else:
        tensor.contents.fp32_contents.extend(values.ravel().tolist())


def fp32_input(
    name: str, batch: np.ndarray
) -> tuple[oip.ModelInferRequest.InferInputTensor, bytes]:
    """A float32 batch as a raw-encoded input tensor: (the tensor, its raw contents)."""
    batch = np.ascontiguousarray(batch, np.float32)
    tensor = oip.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=batch.shape)
    return tensor, batch.tobytes()
