"""What every model store keeps for a model: a manifest plus the files the guest reads."""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import invalid_argument
from ..inference.labels import labels_from_metadata
from ..inference.model import ModelSpec, inspect_model

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.txt"


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

    @property
    def num_classes(self) -> int:
        return math.prod(self.spec.outputs[0].shape) if self.spec.outputs else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            **self.spec.to_dict(),
            "labels": self.has_labels,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelManifest:
        return cls(
            name=str(data["name"]),
            version=int(data["version"]),
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            spec=ModelSpec.from_dict(data),
            has_labels=bool(data.get("labels", False)),
            created=float(data.get("created", 0.0)),
        )


@dataclass(frozen=True)
class StoredModel:
    """A model version on local disk: the directory is preopened read-only for the guest."""

    manifest: ModelManifest
    directory: Path

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def labels_path(self) -> Path | None:
        return self.directory / LABELS_FILE if self.manifest.has_labels else None


def prepare_model(
    name: str, model: bytes, labels: list[str] | None, version: int
) -> tuple[ModelManifest, list[str] | None]:
    """Validate a model and its labels before any store keeps them."""
    check_name(name)
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
