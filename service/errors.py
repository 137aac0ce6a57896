"""Errors a request can end with. Each kind maps to one gRPC status at the Dapr edge."""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    INVALID_ARGUMENT = "invalid_argument"  # bad image, bad request fields
    NOT_FOUND = "not_found"  # unknown model or guest
    RESOURCE_EXHAUSTED = "resource_exhausted"  # over a size, memory or output limit
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the guest ran past its deadline
    UNAVAILABLE = "unavailable"  # transient: store down, model not loaded yet
    GUEST_FAILED = "guest_failed"  # the business logic trapped or exited non-zero
    INTERNAL = "internal"


class ClassifierError(Exception):
    """A request failed for a reason the caller should be told about."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.kind.value, "message": self.message}


def invalid_argument(message: str) -> ClassifierError:
    return ClassifierError(ErrorKind.INVALID_ARGUMENT, message)


def not_found(message: str) -> ClassifierError:
    return ClassifierError(ErrorKind.NOT_FOUND, message)
