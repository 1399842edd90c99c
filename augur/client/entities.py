"""Client side of a request's entity columns: Python or numpy columns -> EntityColumn
messages. The server's checks of them are augur/serving/codec.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from augur.api.v1 import predictor_pb2 as pb


def encode_entities(entities: Mapping[str, Sequence]) -> dict[str, pb.EntityColumn]:
    """Integer columns as int64s, string (or object) columns as strings."""
    out = {}
    for name, values in entities.items():
        array = np.asarray(values)
        if array.dtype.kind in "iu":
            out[name] = pb.EntityColumn(int64s=pb.Int64List(values=array.tolist()))
        elif array.dtype.kind in "US" or array.dtype == object:
            out[name] = pb.EntityColumn(strings=pb.StringList(values=[str(v) for v in values]))
        else:
            raise TypeError(f"entities[{name!r}]: expected integers or strings, got {array.dtype}")
    return out
