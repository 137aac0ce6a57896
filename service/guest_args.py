"""The argument template of a command-style business-logic guest.

Guests written for WasmEdge are WASI commands that take their model and image as file
paths in their arguments and print their answer. To serve one as the business logic of
`classify`, its arguments are given as a template (with the guest: CLASSIFIER_GUEST_ARGS,
`classify --guest-args`, or `guests put --args` for a stored guest), filled in for each
request from these placeholders:

    {model_path}   the model file, in the read-only directory /model
    {labels_path}  the model's labels file there (for models that have labels)
    {model_name}   the model's name (what wasi-nn load_by_name opens)
    {image_path}   the request's image, a file in the read-only directory /input
    {top_k}        the number of classes the request asked for

e.g. `{model_path} {image_path}`. The image is also on the guest's stdin; it is written
to a file only when the template names {image_path}.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from .errors import invalid_argument

IMAGE_DIR_IN_GUEST = "/input"
PLACEHOLDERS = frozenset({"model_path", "labels_path", "model_name", "image_path", "top_k"})
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]*)\}")


def parse_template(text: str) -> tuple[str, ...]:
    """Split a template written as a command line (shell quoting) and check it."""
    try:
        args = tuple(shlex.split(text))
    except ValueError as exc:
        raise invalid_argument(f"guest args {text!r}: {exc}") from exc
    check_template(args)
    return args


def check_template(args: tuple[str, ...]) -> None:
    unknown = sorted({name for arg in args for name in _PLACEHOLDER.findall(arg)} - PLACEHOLDERS)
    if unknown:
        known = ", ".join(f"{{{name}}}" for name in sorted(PLACEHOLDERS))
        raise invalid_argument(f"unknown guest args placeholder {{{unknown[0]}}} (known: {known})")


def uses(args: tuple[str, ...], placeholder: str) -> bool:
    return any(f"{{{placeholder}}}" in arg for arg in args)


def render(args: tuple[str, ...], values: Mapping[str, str | None]) -> list[str]:
    """The arguments for one request. A placeholder without a value is an error."""

    def value(match: re.Match[str]) -> str:
        filled = values.get(match.group(1))
        if filled is None:
            raise invalid_argument(f"the guest's args need {{{match.group(1)}}}, which this request has not")
        return filled

    return [_PLACEHOLDER.sub(value, arg) for arg in args]
