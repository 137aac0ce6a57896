"""The store contract: what every store keeps for a model or a guest, and how it is asked for it.

Two stores implement it: `local.LocalStore` (a directory, the embedded default) and
`dapr.DaprStore` (a Dapr state store through the sidecar). Both hand out models as files
on local disk, since the guest reads the labels from a preopened directory and LiteRT
takes the model bytes.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import wasmtime

from ..errors import ClassifierError, ErrorKind, invalid_argument
from ..guest_args import check_template
from ..inference.backend import Encoding, backend_for, inspect_model
from ..inference.labels import labels_from_metadata
from ..inference.model import ModelSpec

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: `$` would accept a final newline
LABELS_FILE = "labels.txt"
GUEST_FILE = "guest.wasm"
MAX_GUEST_ARGS = 64


def store_unavailable(message: str) -> ClassifierError:
    """A transient fault: the store (or its sidecar) cannot be reached now."""
    return ClassifierError(ErrorKind.UNAVAILABLE, message)


def store_fault(message: str) -> ClassifierError:
    """What the store holds is damaged: a missing chunk, a digest that does not match."""
    return ClassifierError(ErrorKind.INTERNAL, message)


def has_digest(data: bytes, sha256: str) -> bool:
    return hashlib.sha256(data).hexdigest() == sha256


def read_verified(path: Path, sha256: str, what: str) -> bytes:
    """A stored file's bytes, checked against its manifest's sha256 on every read: a store hands out
    what was uploaded or a store fault, never damaged bytes (a disk error, a hand edit)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise store_fault(f"{what}: {path.name} cannot be read ({exc.strerror})") from exc
    if not has_digest(data, sha256):
        raise store_fault(f"{what}: {path.name} does not match the manifest's sha256")
    return data


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise invalid_argument(
            f"invalid name {name!r}: 1-64 letters, digits, '.', '_' or '-', not starting with '.', '_' or '-'"
        )
    return name


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: int
    sha256: str
    size: int
    spec: ModelSpec
    has_labels: bool
    created: float  # unix time
    encoding: str = Encoding.TENSORFLOWLITE.value  # the inference backend's (manifests before it: TFLite)
    # The business-logic guest that runs this model's requests (a stored or shipped guest's
    # name, guest_source.py) and its args template; None: the service's guest.
    guest: str | None = None
    guest_args: tuple[str, ...] | None = None
    # Set by put() and set_guest() only: the current version already had these bytes, labels and
    # guest, nothing was stored.
    unchanged: bool = field(default=False, compare=False, repr=False)

    @property
    def num_classes(self) -> int:
        return math.prod(self.spec.outputs[0].shape) if self.spec.outputs else 0

    @property
    def model_file(self) -> str:
        """The model's file name on disk: `model` and the suffix of its encoding (model.tflite)."""
        backend = backend_for(Encoding(self.encoding))
        return "model" + (backend.file_suffix if backend is not None else ".bin")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            **self.spec.to_dict(),
            "labels": self.has_labels,
            "created": self.created,
            "encoding": self.encoding,
            "guest": self.guest,
            "guest_args": list(self.guest_args) if self.guest_args is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelManifest:
        guest_args = data.get("guest_args")
        return cls(
            name=str(data["name"]),
            version=int(data["version"]),
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            spec=ModelSpec.from_dict(data),
            has_labels=bool(data.get("labels")),  # a flag here, the list itself in the Dapr store
            created=float(data.get("created", 0.0)),
            encoding=str(data.get("encoding", Encoding.TENSORFLOWLITE.value)),
            guest=str(data["guest"]) if data.get("guest") else None,  # manifests before it: none
            guest_args=tuple(str(a) for a in guest_args) if guest_args is not None else None,
        )


@dataclass(frozen=True)
class StoredModel:
    """A model version on local disk: the directory is preopened read-only for the guest."""

    manifest: ModelManifest
    directory: Path

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest.model_file

    @property
    def labels_path(self) -> Path | None:
        return self.directory / LABELS_FILE if self.manifest.has_labels else None


def check_model_guest(guest: str | None, guest_args: tuple[str, ...] | None) -> None:
    """A model's guest is named (a stored or shipped guest; a file path would not mean the same on
    every replica), and its args template is valid."""
    if guest is None:
        if guest_args is not None:
            raise invalid_argument("guest args are for a model's guest: name the guest too")
        return
    if guest.endswith(".wasm") or "/" in guest:
        raise invalid_argument(
            f"a model's guest is a stored or shipped guest's name, not a file ({guest!r}): "
            "store it first with `classifier guests put NAME FILE.wasm`"
        )
    check_name(guest)
    if guest_args is not None:
        if len(guest_args) > MAX_GUEST_ARGS:
            raise invalid_argument(f"more than {MAX_GUEST_ARGS} guest arguments")
        check_template(guest_args)


def prepare_model(
    name: str,
    model: bytes,
    labels: list[str] | None,
    version: int,
    guest: str | None = None,
    guest_args: tuple[str, ...] | None = None,
) -> tuple[ModelManifest, list[str] | None]:
    """Validate a model, its labels and its guest before any store keeps them."""
    check_name(name)
    check_model_guest(guest, guest_args)
    try:
        spec = inspect_model(model)
    except ValueError as exc:
        raise invalid_argument(f"{name}: {exc}") from exc
    manifest = ModelManifest(
        name=name,
        version=version,
        sha256=hashlib.sha256(model).hexdigest(),
        size=len(model),
        spec=spec,
        has_labels=False,
        created=time.time(),
        guest=guest,
        guest_args=guest_args,
    )
    if labels is None:
        labels = labels_from_metadata(model, manifest.num_classes)
    elif len(labels) != manifest.num_classes:
        raise invalid_argument(
            f"{name}: the labels file has {len(labels)} lines, the model has {manifest.num_classes} classes"
        )
    if labels is not None:
        manifest = replace(manifest, has_labels=True)
    return manifest, labels


@dataclass(frozen=True)
class GuestManifest:
    """A business-logic guest. `args` is the argument template of a command-style guest
    (placeholders such as `{model_path}` and `{image_path}`, see guest_args.py); None means
    the default guest interface."""

    name: str
    version: int
    sha256: str
    size: int
    args: tuple[str, ...] | None
    created: float
    # Set by put_guest() only: the current version already had these bytes and args, nothing was stored.
    unchanged: bool = field(default=False, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "args": list(self.args) if self.args is not None else None,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuestManifest:
        args = data.get("args")
        return cls(
            name=str(data["name"]),
            version=int(data["version"]),
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            args=tuple(str(a) for a in args) if args is not None else None,
            created=float(data.get("created", 0.0)),
        )


@dataclass(frozen=True)
class StoredGuest:
    manifest: GuestManifest
    wasm: bytes


def prepare_guest(name: str, wasm: bytes, args: tuple[str, ...] | None, version: int) -> GuestManifest:
    """Validate a guest before any store keeps it."""
    check_name(name)
    if not wasm.startswith(b"\0asm"):
        raise invalid_argument(
            f"{name}: not a valid wasm module: it does not start with \\0asm (give a .wasm file)"
        )
    try:
        wasmtime.Module.validate(wasmtime.Engine(), wasm)
    except wasmtime.WasmtimeError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise invalid_argument(f"{name}: not a valid wasm module: {message}") from exc
    if args is not None and len(args) > MAX_GUEST_ARGS:
        raise invalid_argument(f"{name}: more than {MAX_GUEST_ARGS} guest arguments")
    if args is not None:
        check_template(args)
    return GuestManifest(
        name=name,
        version=version,
        sha256=hashlib.sha256(wasm).hexdigest(),
        size=len(wasm),
        args=args,
        created=time.time(),
    )


class Progress(Protocol):
    def __call__(self, done: int, total: int) -> None: ...


class Store(Protocol):
    """Models and guests, by name, each with a current version.

    A put of what the current version already holds (the same sha256, labels and guest, or
    for a guest the same sha256 and args) stores nothing: it returns the current manifest with
    `unchanged` set."""

    def put(
        self,
        name: str,
        model: bytes,
        labels: list[str] | None = None,
        progress: Progress | None = None,
        *,
        guest: str | None = None,
        guest_args: tuple[str, ...] | None = None,
    ) -> ModelManifest: ...

    def set_guest(
        self, name: str, guest: str | None, guest_args: tuple[str, ...] | None = None
    ) -> ModelManifest:
        """A new version of the model with the same bytes and labels and this guest (None: the
        service's); nothing if the current version has it already (`unchanged`)."""
        ...

    def manifest(self, name: str) -> ModelManifest:
        """The current version's manifest: cheap, for polling."""
        ...

    def get(self, name: str) -> StoredModel:
        """The current version, as files on local disk, its digest verified."""
        ...

    def list_models(self) -> list[ModelManifest]: ...

    def remove(self, name: str) -> None: ...

    def put_guest(
        self, name: str, wasm: bytes, args: tuple[str, ...] | None = None, progress: Progress | None = None
    ) -> GuestManifest: ...

    def guest_manifest(self, name: str) -> GuestManifest: ...

    def get_guest(self, name: str) -> StoredGuest: ...

    def list_guests(self) -> list[GuestManifest]: ...

    def remove_guest(self, name: str) -> None: ...
