"""The local directory store, the embedded default when no Dapr sidecar is present.

    <root>/models/<name>/current          the active version number
    <root>/models/<name>/<version>/       model.tflite, labels.txt, manifest.json
    <root>/guests/<name>/current
    <root>/guests/<name>/<version>/       guest.wasm, manifest.json

Each version has its own directory and `current` is replaced atomically, so a request
that started on a version keeps reading that version's files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ClassifierError, ErrorKind, not_found
from ..files import write_atomically
from .base import (
    GUEST_FILE,
    LABELS_FILE,
    NAME_PATTERN,
    GuestManifest,
    ModelManifest,
    Progress,
    StoredGuest,
    StoredModel,
    check_model_guest,
    check_name,
    prepare_guest,
    prepare_model,
    read_verified,
    store_fault,
)

T = TypeVar("T")

MANIFEST_FILE = "manifest.json"
KEEP_VERSIONS = 2


class _VersionedDirs:
    """`<root>/<name>/<version>/` directories with an atomically switched `current`."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root = root
        self.kind = kind

    def current_version(self, name: str) -> int:
        if not NAME_PATTERN.match(name):
            return 0
        try:
            return int((self.root / name / "current").read_text().strip())
        except (OSError, ValueError):
            return 0

    def current_dir(self, name: str) -> Path:
        version = self.current_version(name)
        if version == 0:
            raise not_found(f"{self.kind} {name!r} not found in {self.root.parent}")
        return self.root / name / str(version)

    def manifest_data(self, name: str) -> dict[str, Any]:
        return read_manifest(self.current_dir(name), f"{self.kind} {name!r}")

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "current").exists())

    def publish(self, name: str, version: int, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        """Write a version's files, then make it current."""
        item_dir = self.root / name
        item_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=item_dir, prefix=".staging-"))
        for file_name, data in files.items():
            (staging / file_name).write_bytes(data)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        staging.chmod(0o755)
        os.replace(staging, item_dir / str(version))
        write_atomically(item_dir / "current", f"{version}\n".encode())
        for entry in item_dir.iterdir():
            if entry.name.isdigit() and int(entry.name) <= version - KEEP_VERSIONS:
                shutil.rmtree(entry, ignore_errors=True)

    def remove(self, name: str) -> None:
        self.current_dir(name)  # NOT_FOUND if absent
        shutil.rmtree(self.root / name)


class LocalStore:
    """Models and guests in a local directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._models = _VersionedDirs(self.root / "models", "model")
        self._guests = _VersionedDirs(self.root / "guests", "guest")

    @property
    def models_dir(self) -> Path:
        return self._models.root

    # -- models ---------------------------------------------------------------------------

    def put(
        self,
        name: str,
        model: bytes,
        labels: list[str] | None = None,
        progress: Progress | None = None,
        *,
        guest: str | None = None,
        guest_args: tuple[str, ...] | None = None,
    ) -> ModelManifest:
        """Store a new version of a model; labels default to those in its metadata."""
        version = self._models.current_version(check_name(name)) + 1
        manifest, labels = prepare_model(name, model, labels, version, guest, guest_args)
        if version > 1 and (current := _intact(self.get, name)) is not None:
            stored_labels = current.labels_path.read_text().splitlines() if current.labels_path else None
            held = (
                current.manifest.sha256,
                stored_labels,
                current.manifest.guest,
                current.manifest.guest_args,
            )
            if held == (manifest.sha256, labels, guest, guest_args):
                return replace(current.manifest, unchanged=True)
        files = {manifest.model_file: model}
        if labels is not None:
            files[LABELS_FILE] = ("\n".join(labels) + "\n").encode("utf-8")
        self._models.publish(name, version, files, manifest.to_dict())
        if progress is not None:
            progress(len(model), len(model))
        return manifest

    def set_guest(
        self, name: str, guest: str | None, guest_args: tuple[str, ...] | None = None
    ) -> ModelManifest:
        check_model_guest(guest, guest_args)
        current = self.get(name)
        if (current.manifest.guest, current.manifest.guest_args) == (guest, guest_args):
            return replace(current.manifest, unchanged=True)
        manifest = replace(
            current.manifest,
            version=current.manifest.version + 1,
            guest=guest,
            guest_args=guest_args,
            created=time.time(),
        )
        files = {
            entry.name: entry.read_bytes()
            for entry in current.directory.iterdir()
            if entry.name != MANIFEST_FILE and entry.is_file()
        }
        self._models.publish(name, manifest.version, files, manifest.to_dict())
        return manifest

    def manifest(self, name: str) -> ModelManifest:
        return ModelManifest.from_dict(self._models.manifest_data(name))

    def get(self, name: str) -> StoredModel:
        directory = self._models.current_dir(name)
        manifest = ModelManifest.from_dict(read_manifest(directory, f"model {name!r}"))
        stored = StoredModel(manifest=manifest, directory=directory)
        read_verified(stored.model_path, manifest.sha256, f"model {name!r} version {manifest.version}")
        return stored

    def list_models(self) -> list[ModelManifest]:
        return [self.manifest(name) for name in self._models.names()]

    def remove(self, name: str) -> None:
        self._models.remove(name)

    # -- guests ---------------------------------------------------------------------------

    def put_guest(
        self, name: str, wasm: bytes, args: tuple[str, ...] | None = None, progress: Progress | None = None
    ) -> GuestManifest:
        version = self._guests.current_version(check_name(name)) + 1
        manifest = prepare_guest(name, wasm, args, version)
        if version > 1 and (stored := _intact(self.get_guest, name)) is not None:
            current = stored.manifest
            if (current.sha256, current.args) == (manifest.sha256, manifest.args):
                return replace(current, unchanged=True)
        self._guests.publish(name, version, {GUEST_FILE: wasm}, manifest.to_dict())
        if progress is not None:
            progress(len(wasm), len(wasm))
        return manifest

    def guest_manifest(self, name: str) -> GuestManifest:
        return GuestManifest.from_dict(self._guests.manifest_data(name))

    def get_guest(self, name: str) -> StoredGuest:
        directory = self._guests.current_dir(name)
        manifest = GuestManifest.from_dict(read_manifest(directory, f"guest {name!r}"))
        what = f"guest {name!r} version {manifest.version}"
        wasm = read_verified(directory / GUEST_FILE, manifest.sha256, what)
        return StoredGuest(manifest=manifest, wasm=wasm)

    def list_guests(self) -> list[GuestManifest]:
        return [self.guest_manifest(name) for name in self._guests.names()]

    def remove_guest(self, name: str) -> None:
        self._guests.remove(name)


def read_manifest(directory: Path, what: str) -> dict[str, Any]:
    """A version's manifest; a store fault if the file is damaged (as the Dapr store's are)."""
    try:
        data = json.loads((directory / MANIFEST_FILE).read_text("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError as exc:  # UnicodeDecodeError too
        message = f"{what} version {directory.name}: {MANIFEST_FILE} is not valid JSON: {exc}"
        raise store_fault(message) from exc
    return data


def _intact(get: Callable[[str], T], name: str) -> T | None:
    """The current version, or None if it is damaged: an upload then stores a new one over it."""
    try:
        return get(name)
    except ClassifierError as exc:
        if exc.kind != ErrorKind.INTERNAL:
            raise
        return None
