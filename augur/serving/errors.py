"""The one place where failures become gRPC status codes."""

from __future__ import annotations

import grpc

# Longest caller-chosen name echoed in full in an error. gRPC sends the message as a
# percent-encoded trailer, and clients drop trailers over 8 KiB: echoing a long name whole
# turned a precise INVALID_ARGUMENT or NOT_FOUND into RESOURCE_EXHAUSTED "Stream removed".
_SHOWN_CHARS = 64


def shown(name: str) -> str:
    """A caller-chosen name as an error shows it: whole when short, else its start."""
    if len(name) <= _SHOWN_CHARS:
        return name
    return f"{name[:_SHOWN_CHARS]}... ({len(name)} characters)"


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
