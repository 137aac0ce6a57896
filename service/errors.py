"""The service's errors: one base class, `ClassifierError`, whose kind says what the caller is told.

Each kind maps to one gRPC status at the Dapr edge (service/edge/calls.py, the one place), to an
exit code and one line on the command line, and to DROP or RETRY for a pub/sub event. Failures of
the layers below (inference, guest memory, the wasm ABIs) are turned into a kind where they are
caught; nothing else reaches a caller.
"""

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


class ConfigError(ClassifierError):
    """A setting with a value that cannot be used: names the variable and the value."""

    def __init__(self, variable: str, value: str, reason: str) -> None:
        super().__init__(ErrorKind.INVALID_ARGUMENT, f"{variable}={value!r}: {reason}")
        self.variable = variable
