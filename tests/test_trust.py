"""What a caller can trust of a running server: discovery answers in every version tools
speak (health List, reflection v1 and v1alpha), a request that is not a request is refused
cheaply, and SIGTERM answers every call the server had admitted."""

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

_REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def _reflect_v1(channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest):
    """One exchange with the v1 reflection service (its messages are v1alpha's fields)."""
    info = channel.stream_stream(
        _REFLECTION_V1,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return next(info(iter([request]), timeout=5))


def test_a_v1_reflection_client_finds_the_predictor(client):
    listed = _reflect_v1(client.channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "augur.v1.Predictor",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    } <= names, names
    for symbol in ("augur.v1.Predictor", "grpc.reflection.v1.ServerReflection"):
        found = _reflect_v1(
            client.channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        )
        assert found.WhichOneof("message_response") == "file_descriptor_response", found


def test_health_list_answers_the_server_and_each_model(client, server):
    listed = health_pb2_grpc.HealthStub(client.channel).List(
        health_pb2.HealthListRequest(), timeout=5
    )
    serving = health_pb2.HealthCheckResponse.SERVING
    assert listed.statuses[""].status == serving
    for model in server.manager.repo.names():
        assert model in listed.statuses, listed
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(listed.statuses[model].status)
        assert status == client.health(model)
