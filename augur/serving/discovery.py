"""How a client finds out what the server serves: grpc.health.v1 (Check, Watch and List: the
server as "" and each model by name) and server reflection in both versions grpcurl and
other tools speak (grpc.reflection.v1 and v1alpha). Not the Predictor service itself."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as alpha

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = reflection.SERVICE_NAME
_ALPHA, _V1 = "grpc.reflection.v1alpha", "grpc.reflection.v1"


class Health(health.HealthServicer):
    """grpcio-health-checking's servicer, and the List it leaves UNIMPLEMENTED: every status
    set so far, as Check would answer each."""

    def List(self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext):
        with self._lock:
            statuses = dict(self._server_status)
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )


def enable_reflection(services: Sequence[str], server: grpc.Server) -> None:
    """Serve reflection over `services` (the reflection services added) in v1 and v1alpha.
    grpcio-reflection 1.85 has only v1alpha; v1 is the same protocol under another package,
    so its descriptors are v1alpha's renamed, and one servicer answers both."""
    _v1_descriptor()
    names = [*services, REFLECTION_V1ALPHA, REFLECTION_V1]
    servicer = reflection.ReflectionServicer(names)
    for service in (REFLECTION_V1ALPHA, REFLECTION_V1):
        handlers = {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                # the messages are the same fields in both: v1alpha's classes read v1's bytes
                request_deserializer=alpha.ServerReflectionRequest.FromString,
                response_serializer=alpha.ServerReflectionResponse.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def _v1_descriptor() -> None:
    """Add grpc/reflection/v1/reflection.proto to the default pool (once), so reflection can
    describe its own v1 service as it describes every other."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    alpha.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = _V1
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:  # set even to "" it would claim a message type
                field.type_name = field.type_name.replace(f".{_ALPHA}.", f".{_V1}.")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{_ALPHA}.", f".{_V1}.")
            method.output_type = method.output_type.replace(f".{_ALPHA}.", f".{_V1}.")
    pool.AddSerializedFile(proto.SerializeToString())
