"""A Predict call's request read from its bytes, and its answer written to bytes, in one C call
each (augur.serving._wire) when it was built; through the protobuf messages otherwise, and
for every request or answer it leaves to them.

`parse_predict(raw)` gives a `WireRequest` - the fields the servicer reads, entity columns
and request features already lists - or None: the caller parses `raw` with protobuf, which
reads or refuses what this module does not take (any encoding but the usual one). The codec
(codec.py) decodes both kinds the same way and checks them with the same code.
`AUGUR_NATIVE=0` turns this module's C off with the read path's (augur.features.native).
"""

from __future__ import annotations

from typing import NamedTuple

from augur.features.native import extension

wire = extension("augur.serving._wire")


class Options(NamedTuple):
    """PredictOptions' fields, as the servicer reads them."""

    return_features: bool = False
    return_feature_status: bool = False


_DEFAULT = Options()


class WireRequest:
    """A PredictRequest read by `parse_predict`: `entities` maps a join key to its oneof
    (("int64s" | "strings", values) or (None, None) when unset), `request_features` a name to
    its doubles; the message's `entities` and `request_features` maps read the same way
    through codec.py."""

    __slots__ = ("entities", "model", "options", "request_features", "version")

    def __init__(
        self,
        model: str,
        version: str,
        entities: dict[str, tuple[str | None, list | None]],
        request_features: dict[str, list[float]],
        options: Options,
    ) -> None:
        self.model = model
        self.version = version
        self.entities = entities
        self.request_features = request_features
        self.options = options


def parse_predict(raw: bytes) -> WireRequest | None:
    """`raw` read as a PredictRequest, or None: leave it to protobuf (no C here, or an
    encoding the C reader does not take)."""
    if wire is None:
        return None
    fields = wire.predict_request(raw)
    if fields is None:
        return None
    model, version, entities, features, with_features, with_status = fields
    options = _DEFAULT if not (with_features or with_status) else Options(*fields[4:])
    return WireRequest(model, version, entities, features, options)
