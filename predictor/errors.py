"""The one place where failures become gRPC status codes."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """A request Augur refuses, with the status code and a message naming the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


def invalid(message: str) -> RequestError:
    return RequestError(message, grpc.StatusCode.INVALID_ARGUMENT)


def not_found(message: str) -> RequestError:
    return RequestError(message, grpc.StatusCode.NOT_FOUND)


def unavailable(message: str) -> RequestError:
    return RequestError(message, grpc.StatusCode.UNAVAILABLE)


def deadline_exceeded(message: str) -> RequestError:
    return RequestError(message, grpc.StatusCode.DEADLINE_EXCEEDED)
