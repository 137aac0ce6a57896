"""Picks up new model and guest versions without a restart.

Two triggers: a poll of the store on an interval (which also recovers from a missed
event or a sidecar that was down), and an update event (`model-updates`, published by
`classifier models put` and `guests put`) for an immediate refresh of one item.
"""

from __future__ import annotations

import logging
import threading

from .errors import ClassifierError, ErrorKind
from .guest_source import resolve_guest
from .pipeline import Classifier

log = logging.getLogger(__name__)


class Watcher:
    def __init__(self, classifier: Classifier, guest_name: str | None, poll_s: float) -> None:
        self.classifier = classifier
        self.guest_name = guest_name
        self.poll_s = poll_s
        self.guest_error: str | None = None
        self._guest_active: tuple[str, tuple[str, ...] | None] | None = None  # (sha256, args template)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one refresh at a time

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name="store-watcher", daemon=True)
        thread.start()
        self._thread = thread  # only once started: stop() may come from another thread meanwhile

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def refresh_guest(self) -> bool:
        """Load the service's guest (CLASSIFIER_GUEST naming a stored or shipped guest) if it is
        new. Raises ClassifierError."""
        if self.guest_name is None:
            return False
        with self._lock:
            source = resolve_guest(self.guest_name, self.classifier.store)
            if (source.sha256, source.args) == self._guest_active:
                return False  # a new version with the same wasm and args changes nothing
            self.classifier.set_guest(source.wasm, source.reference, source.args)
            self._guest_active = (source.sha256, source.args)
            self.guest_error = None
            version = f" version {source.version}" if source.version else ""
            log.info("guest %s (%s%s) active", source.reference, source.origin, version)
            return True

    def on_update(self, kind: str, name: str) -> None:
        """An update event. Raises ClassifierError(UNAVAILABLE) if the store cannot be reached."""
        if kind == "guest":
            if name == self.guest_name:
                self._refresh_guest_logged()
            self.classifier.model_guests.refresh([name])
            return
        with self._lock:
            self.classifier.models.refresh(name)

    def _refresh_guest_logged(self) -> None:
        try:
            self.refresh_guest()
        except ClassifierError as exc:
            if exc.kind == ErrorKind.UNAVAILABLE:
                raise
            self.guest_error = exc.message
            log.error("guest %s not activated: %s", self.guest_name, exc.message)

    def _run(self) -> None:
        failing = False  # a store outage is logged when it starts and ends, not every poll
        while not self._stop.wait(self.poll_s):
            try:
                with self._lock:
                    self.classifier.models.refresh_all()
                self._refresh_guest_logged()
                self.classifier.model_guests.refresh()
                if failing:
                    log.info("polling the store: it answers again")
                failing = False
            except ClassifierError as exc:
                if not failing:
                    log.warning("polling the store: %s (logged again when it answers)", exc.message)
                failing = True
            except Exception:
                log.exception("polling the store")
