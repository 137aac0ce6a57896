"""The loaded models: one active version per name, replaced without a restart.

A new version is fetched, verified and loaded beside the active one and only then swapped
in; a request holds the LoadedModel it started with, so it finishes on that version. A
version that fails to fetch or load is not activated: the previous one keeps serving and
the failure is kept in the model's status (the `models` method shows it) and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ClassifierError, ErrorKind
from .inference.backend import Encoding, Graph, load_graph
from .stores.base import Store, StoredModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    stored: StoredModel
    graph: Graph
    labels: tuple[str, ...] = ()  # read once at load: the host attaches them for the built-in guest

    @property
    def name(self) -> str:
        return self.stored.manifest.name

    @property
    def version(self) -> int:
        return self.stored.manifest.version


@dataclass
class ModelStatus:
    name: str
    version: int = 0  # the active version; 0 while none is
    sha256: str = ""
    error: str | None = None  # why the latest version could not be activated
    failed_version: int = 0
    loaded_at: float = 0.0
    guest: str | None = None  # the guest the active version names; None: the service's
    guest_args: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "ready": self.version > 0,
            "error": self.error,
            "failed_version": self.failed_version or None,
            "loaded_at": self.loaded_at or None,
            "guest": self.guest,
            "guest_args": list(self.guest_args) if self.guest_args is not None else None,
        }


class ModelEvents(Protocol):
    """Told of each version activated or refused (the service's metrics)."""

    def model_activated(self, name: str, version: int) -> None: ...

    def model_failed(self, name: str, version: int) -> None: ...


def _read_labels(stored: StoredModel) -> tuple[str, ...]:
    """The labels file as the built-in guest reads it: one label per line, a trailing CR dropped."""
    path = stored.labels_path
    if path is None:
        return ()
    text = path.read_text("utf-8")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return tuple(line.removesuffix("\r") for line in lines)


class ModelRegistry:
    """Active model versions by name, loaded from a store. Thread-safe."""

    def __init__(self, store: Store, interpreter_threads: int = 1, solo_interpreter_threads: int = 1) -> None:
        self.store = store
        self.interpreter_threads = interpreter_threads
        self.solo_interpreter_threads = solo_interpreter_threads
        self._models: dict[str, LoadedModel] = {}
        self._status: dict[str, ModelStatus] = {}
        self._lock = threading.Lock()  # guards the two dicts
        self._loading = threading.Lock()  # one load at a time: each costs a fetch and ~10 ms of CPU
        self.events: ModelEvents | None = None

    def get(self, name: str) -> LoadedModel:
        """The active version, loading it from the store on first use."""
        loaded = self._models.get(name)
        if loaded is not None:
            return loaded
        with self._loading:
            loaded = self._models.get(name)
            if loaded is None:
                loaded = self._load(self.store.get(name))
                self._activate(loaded)
        return loaded

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def statuses(self) -> list[ModelStatus]:
        with self._lock:
            return [self._status[name] for name in sorted(self._status)]

    def refresh(self, name: str) -> bool:
        """Activate the store's current version of `name` if it is new; True if one was.

        Store faults and bad models are recorded in the model's status, not raised; a
        transient fault (store unavailable) is raised, so the caller can retry later."""
        with self._loading:
            active = self._models.get(name)
            try:
                manifest = self.store.manifest(name)
            except ClassifierError as exc:
                if exc.kind == ErrorKind.NOT_FOUND and active is not None:
                    self._deactivate(name)  # removed from the store: stop serving it
                    return True
                if exc.kind == ErrorKind.NOT_FOUND:
                    return False
                raise
            if active is not None and (active.version, active.stored.manifest.sha256) == (
                manifest.version,
                manifest.sha256,
            ):
                return False
            status = self._status_of(name)
            if status.failed_version == manifest.version:
                return False  # already failed: wait for a newer upload
            try:
                loaded = self._load(self.store.get(name))
            except ClassifierError as exc:
                if exc.kind == ErrorKind.UNAVAILABLE:
                    raise
                self._fail(name, manifest.version, exc.message)
                return False
            self._activate(loaded)
            return True

    def refresh_all(self, names: list[str] | None = None) -> list[str]:
        """Refresh the given models (default: every model in the store and every loaded
        one); the names of those whose version changed."""
        if names is None:
            names = sorted({m.name for m in self.store.list_models()} | set(self._models))
        return [name for name in names if self.refresh(name)]

    # -- internals ------------------------------------------------------------------------

    def _load(self, stored: StoredModel) -> LoadedModel:
        try:
            encoding = Encoding(stored.manifest.encoding)
            graph = load_graph(
                stored.model_path.read_bytes(),
                encoding,
                self.interpreter_threads,
                self.solo_interpreter_threads,
            )
        except (OSError, ValueError) as exc:
            raise ClassifierError(
                ErrorKind.INTERNAL, f"model {stored.manifest.name!r} cannot be loaded: {exc}"
            ) from exc
        return LoadedModel(stored, graph, _read_labels(stored))

    def _status_of(self, name: str) -> ModelStatus:
        with self._lock:
            return self._status.setdefault(name, ModelStatus(name))

    def _activate(self, loaded: LoadedModel) -> None:
        with self._lock:
            previous = self._models.get(loaded.name)
            self._models[loaded.name] = loaded
            self._status[loaded.name] = ModelStatus(
                name=loaded.name,
                version=loaded.version,
                sha256=loaded.stored.manifest.sha256,
                loaded_at=time.time(),
                guest=loaded.stored.manifest.guest,
                guest_args=loaded.stored.manifest.guest_args,
            )
        if self.events is not None:
            self.events.model_activated(loaded.name, loaded.version)
        if previous is None:
            log.info("model %s version %d loaded", loaded.name, loaded.version)
        else:
            log.info("model %s: version %d replaces %d", loaded.name, loaded.version, previous.version)

    def _deactivate(self, name: str) -> None:
        with self._lock:
            self._models.pop(name, None)
            self._status.pop(name, None)
        log.info("model %s was removed from the store: no longer served", name)

    def _fail(self, name: str, version: int, message: str) -> None:
        with self._lock:
            status = self._status.setdefault(name, ModelStatus(name))
            status.error = message
            status.failed_version = version
        if self.events is not None:
            self.events.model_failed(name, version)
        log.error("model %s version %d not activated: %s", name, version, message)
