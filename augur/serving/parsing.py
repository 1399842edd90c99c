"""A service's requests taken as bytes and parsed in the handler, after the interceptors
(token auth) have run: bytes that are not the method's message end the call INVALID_ARGUMENT,
counted, with no traceback and nothing kept. gRPC's own parsing, before any interceptor,
logs a traceback and keeps about 16 KB per undecodable call (grpcio 1.85)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from augur.serving import metrics


def add_parsed(
    service: ServiceDescriptor,
    messages: ModuleType,
    servicer: Any,
    server: grpc.Server,
    readers: Mapping[str, Callable[[bytes], Any]] | None = None,
) -> None:
    """Register every method `service` declares (same service and method names on the wire as
    the generated code's, same responses) on `servicer`'s methods of those names; `messages`:
    the generated module holding the request and response classes. `readers`: per method, a
    reader of the request's bytes tried before protobuf's (augur.serving.wire's), whose None
    leaves them to protobuf. A method may answer with its response already serialized."""
    readers = readers or {}
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            _parsing(
                m.name,
                getattr(messages, m.input_type.name),
                getattr(servicer, m.name),
                readers.get(m.name),
            ),
            request_deserializer=None,  # the bytes as they came
            response_serializer=_serializer(getattr(messages, m.output_type.name)),
        )
        for m in service.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def _serializer(message: type[Message]) -> Callable[[Any], bytes]:
    """The response's bytes: a message serialized, or the bytes a method answered with."""
    serialize = message.SerializeToString

    def serialized(response: Any) -> bytes:
        return response if response.__class__ is bytes else serialize(response)

    return serialized


def _parsing(
    method: str,
    message: type[Message],
    behavior: Callable[[Any, grpc.ServicerContext], Any],
    reader: Callable[[bytes], Any] | None,
) -> Callable[[bytes, grpc.ServicerContext], Any]:
    """`behavior` on the parsed request (read by `reader` where it takes the bytes); bytes
    that are not a `message` end the call INVALID_ARGUMENT, counted, without a traceback."""
    parse, name = message.FromString, message.DESCRIPTOR.full_name
    undecodable = metrics.REQUESTS_UNDECODABLE.labels(method)

    def handle(raw: bytes, context: grpc.ServicerContext) -> Any:
        request = None if reader is None else reader(raw)
        if request is not None:
            return behavior(request, context)
        try:
            request = parse(raw)
        except DecodeError as e:
            undecodable.inc()
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is not a valid {name}: {e}; send a serialized {name}",
            )
        return behavior(request, context)

    return handle
