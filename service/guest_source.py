"""Where a business-logic guest comes from: one resolution of a guest reference, used for
CLASSIFIER_GUEST, `classifier classify --guest` and the guest a model names.

    path/to/guest.wasm   a file (a reference ending in .wasm or holding a /)
    NAME                 the guest stored under NAME (`classifier guests put`), else the guest
                         shipped under NAME: wasm/bin, installed as the service.guests package
                         (classify, the default; describe; mnist; see docs/guests.md)

A stored guest comes first, so that an operator can replace a shipped one without a redeploy.
Shipped and file guests have the default interface (no args template) unless one is given
with them; a stored guest has the args it was stored with.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from .errors import ClassifierError, ErrorKind, not_found
from .stores.base import Store, check_name
from .wasm.host import Guest, WasmHost

log = logging.getLogger(__name__)

SHIPPED_PACKAGE = "service.guests"


@dataclass(frozen=True)
class GuestSource:
    """A resolved guest: its bytes, and where they came from."""

    reference: str  # as given: a name or a path
    origin: str  # "stored", "shipped" or "file"
    wasm: bytes
    args: tuple[str, ...] | None  # a stored guest's args template; None: the default interface
    version: int = 0  # a stored guest's version; 0 for the others

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.wasm).hexdigest()


def shipped_guests() -> list[str]:
    """The names of the guests shipped in the package."""
    return sorted(
        entry.name.removesuffix(".wasm")
        for entry in files(SHIPPED_PACKAGE).iterdir()
        if entry.name.endswith(".wasm")
    )


def is_path(reference: str) -> bool:
    return reference.endswith(".wasm") or "/" in reference


def resolve_guest(reference: str, store: Store | None) -> GuestSource:
    """The guest a reference names (module docstring). Raises ClassifierError: NOT_FOUND for
    nothing by that name or path, UNAVAILABLE if the store cannot be reached."""
    if is_path(reference):
        try:
            return GuestSource(reference, "file", Path(reference).read_bytes(), None)
        except OSError as exc:
            raise not_found(f"the guest {reference}: {exc.strerror or exc}") from exc
    check_name(reference)
    if store is not None:
        try:
            stored = store.get_guest(reference)
            return GuestSource(
                reference, "stored", stored.wasm, stored.manifest.args, stored.manifest.version
            )
        except ClassifierError as exc:
            if exc.kind != ErrorKind.NOT_FOUND:
                raise
    shipped = files(SHIPPED_PACKAGE) / f"{reference}.wasm"
    if shipped.is_file():
        return GuestSource(reference, "shipped", shipped.read_bytes(), None)
    raise not_found(
        f"guest {reference!r} is neither stored (`classifier guests put {reference} FILE.wasm`) nor "
        f"shipped ({', '.join(shipped_guests())}); a file's path ends in .wasm"
    )


class ModelGuests:
    """The guests that models name, each resolved and compiled once, and re-resolved by
    `refresh()` (the watcher's poll, an update event) so that a new stored version is taken up.
    Thread-safe."""

    def __init__(self, host: WasmHost, store: Store) -> None:
        self.host = host
        self.store = store
        self._active: dict[str, tuple[GuestSource, Guest]] = {}
        self._lock = threading.Lock()

    def get(self, reference: str) -> tuple[Guest, tuple[str, ...] | None]:
        """The compiled guest and its stored args template (None for a shipped guest)."""
        entry = self._active.get(reference)
        if entry is None:
            with self._lock:
                entry = self._active.get(reference) or self._load(reference)
        source, guest = entry
        return guest, source.args

    def refresh(self, references: list[str] | None = None) -> list[str]:
        """Re-resolve the guests in use (or those named); the references whose guest changed.
        A guest that cannot be resolved now keeps its active version (and is logged)."""
        changed = []
        for reference in references if references is not None else list(self._active):
            active = self._active.get(reference)
            if active is None:
                continue
            try:
                source = resolve_guest(reference, self.store)
            except ClassifierError as exc:
                log.warning(
                    "guest %s, named by a model: %s (its active version keeps serving)", reference, exc
                )
                continue
            if (source.sha256, source.args) != (active[0].sha256, active[0].args):
                with self._lock:
                    self._load(reference, source)
                changed.append(reference)
        return changed

    def _load(self, reference: str, source: GuestSource | None = None) -> tuple[GuestSource, Guest]:
        source = source or resolve_guest(reference, self.store)
        entry = (source, self.host.load_guest(source.wasm, reference))
        self._active[reference] = entry
        log.info("guest %s (%s%s) active for the models that name it", reference, source.origin,
                 f" version {source.version}" if source.version else "")  # fmt: skip
        return entry
