"""The local directory store, the embedded default when no Dapr sidecar is present.

    <root>/models/<name>/current          the active version number
    <root>/models/<name>/<version>/       model.tflite, labels.txt, manifest.json

Each version has its own directory and `current` is replaced atomically, so a request
that started on a version keeps reading that version's files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import not_found
from .base import (
    LABELS_FILE,
    MODEL_FILE,
    NAME_PATTERN,
    ModelManifest,
    StoredModel,
    check_name,
    prepare_model,
)

MANIFEST_FILE = "manifest.json"
KEEP_VERSIONS = 2


class LocalModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models_dir = self.root / "models"

    def put(self, name: str, model: bytes, labels: list[str] | None = None) -> ModelManifest:
        """Store a new version of a model; labels default to those in its metadata."""
        version = self._current_version(check_name(name)) + 1
        manifest, labels = prepare_model(name, model, labels, version)
        model_dir = self.models_dir / name
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".staging-"))
        (staging / MODEL_FILE).write_bytes(model)
        if labels is not None:
            (staging / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2))
        staging.chmod(0o755)
        os.replace(staging, model_dir / str(version))
        _write_text_atomically(model_dir / "current", f"{version}\n")
        self._prune(model_dir, version)
        return manifest

    def get(self, name: str) -> StoredModel:
        version = self._current_version(name) if self._valid(name) else 0
        if version == 0:
            raise not_found(f"model {name!r} not found in {self.root}")
        directory = self.models_dir / name / str(version)
        manifest = ModelManifest.from_dict(json.loads((directory / MANIFEST_FILE).read_text()))
        return StoredModel(manifest=manifest, directory=directory)

    def list(self) -> list[ModelManifest]:
        if not self.models_dir.is_dir():
            return []
        names = sorted(p.name for p in self.models_dir.iterdir() if (p / "current").exists())
        return [self.get(name).manifest for name in names]

    def remove(self, name: str) -> None:
        if not self._valid(name) or self._current_version(name) == 0:
            raise not_found(f"model {name!r} not found in {self.root}")
        shutil.rmtree(self.models_dir / name)

    @staticmethod
    def _valid(name: str) -> bool:
        return NAME_PATTERN.match(name) is not None

    def _current_version(self, name: str) -> int:
        try:
            return int((self.models_dir / name / "current").read_text().strip())
        except (OSError, ValueError):
            return 0

    @staticmethod
    def _prune(model_dir: Path, current: int) -> None:
        for entry in model_dir.iterdir():
            if entry.name.isdigit() and int(entry.name) <= current - KEEP_VERSIONS:
                shutil.rmtree(entry, ignore_errors=True)


def _write_text_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)
