"""The classify pipeline: request -> business-logic guest -> host functions -> response.

`Classifier` owns the shared state, built once: the wasm host, the business-logic
guest, and the model registry (each model a graph with its interpreter pools). A
request gets its own GuestCall, which sees only the model it asked for, at the version
that was active when it started.

A request runs through named stages, each timed (in the spirit of KServe's preprocess /
predict / postprocess): `admit` (pick the model, check the request), `guest` (the wasm
run, less the host work it asked for), `decode` and `inference` (that host work: image
decoding and model invocation), `respond` (the guest's output into a response). The
`Outcome` of a run carries the response or the error, and the timings, for the edge,
metrics, logs and the benchmark to read.

The guest is called one of two ways. The default interface (the built-in guest's,
default_guest.py): the model's spec as arguments, the image on stdin. A command-style guest (one written for
WasmEdge) has an args template instead (guest_args.py): it gets the model by path, the
image on stdin and, if its template asks, as a file in a per-request read-only
directory. Either way its stdout is the response: a JSON object as it is, other text
as {"output": ...}.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import default_guest, guest_args
from .config import Settings
from .default_guest import MODEL_DIR_IN_GUEST, Exit
from .errors import ClassifierError, ErrorKind, invalid_argument
from .guest_source import ModelGuests
from .imaging import image_extension
from .inference.cache import GraphCache
from .registry import LoadedModel, ModelRegistry
from .stores.base import Store
from .stores.local import LocalStore
from .wasm.call import GuestCall
from .wasm.host import Guest, GuestResult, Preopen, WasmHost

DEFAULT_TOP_K = 5
STAGES = ("admit", "guest", "decode", "inference", "respond")

# A failed guest whose memory is this close to its cap is taken to have run out of memory:
# a few large allocations' worth (the default guest grows its buffers by doubling).
MEMORY_HEADROOM = 2 << 20


@dataclass
class Outcome:
    """How one request went: its response or its error, and the seconds spent in each stage."""

    response: dict[str, Any] | None = None
    error: ClassifierError | None = None
    timings: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    version: int = 0
    trap: str | None = None  # the kind of trap the guest ended with (GuestResult.trap_reason)

    @property
    def code(self) -> str:
        """`ok`, or the error's code (the README's table)."""
        return "ok" if self.error is None else self.error.kind.value

    def result(self) -> dict[str, Any]:
        """The response; raises the error."""
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response


class _Stages:
    """Times consecutive stages of one request into `timings`."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.started = self.mark = time.perf_counter()

    def end(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.mark
        self.mark = now

    def total(self) -> float:
        return time.perf_counter() - self.started


@dataclass(frozen=True)
class BusinessGuest:
    """The business-logic guest and how it is called, swapped as one."""

    guest: Guest
    args_template: tuple[str, ...] | None = None  # a command-style guest's; None: the default interface


class Classifier:
    """Classifies images through the business-logic guest. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        guest_wasm: bytes | None = None,
        *,
        guest_overrides_models: bool = False,
    ) -> None:
        self.settings = settings
        self.store: Store = store or LocalStore(settings.store_dir)
        self.models = ModelRegistry(
            self.store, settings.interpreter_threads, settings.solo_interpreter_threads
        )
        self.host = WasmHost(settings.module_cache_dir)
        self.graph_cache = GraphCache(num_threads=settings.interpreter_threads)
        if settings.guest_args is not None and settings.guest is None and guest_wasm is None:
            raise invalid_argument(
                "guest args (CLASSIFIER_GUEST_ARGS) are for a guest given as a file "
                "(CLASSIFIER_GUEST=FILE.wasm); a stored guest keeps its args in the store"
            )
        if guest_wasm is None and settings.guest is not None:
            try:
                guest_wasm = settings.guest.read_bytes()
            except OSError as exc:
                raise invalid_argument(f"the guest {settings.guest}: {exc.strerror or exc}") from exc
        if guest_wasm is None:
            guest_wasm = default_guest.guest_bytes()
        self.business = BusinessGuest(self.host.load_guest(guest_wasm, "classify"), settings.guest_args)
        # The built-in guest leaves the labels to the host (reading a file over WASI costs it
        # ~0.4-0.7 ms a request); other default-interface guests get the labels file as before.
        self.builtin_guest_digest = hashlib.sha256(default_guest.guest_bytes()).hexdigest()
        # A model may name its own guest (`models put --guest`), which runs its requests instead
        # of this one, unless this one was chosen for the run (`classify --guest`).
        self.model_guests = ModelGuests(self.host, self.store)
        self.guest_overrides_models = guest_overrides_models

    @property
    def guest(self) -> Guest:
        return self.business.guest

    def close(self) -> None:
        self.host.close()

    def model(self, name: str) -> LoadedModel:
        """The active version of a model, loading it from the store on first use."""
        return self.models.get(name)

    # -- what the edge needs to know and do: start-up, status, the default model -----------

    def load_models(self, names: Sequence[str] = ()) -> list[str]:
        """Load the named models (default: every model in the store); the names loaded.
        Raises ClassifierError (NOT_FOUND for a name not stored yet, UNAVAILABLE for the store)."""
        names = list(names) or [manifest.name for manifest in self.store.list_models()]
        for name in names:
            self.models.get(name)
        return names

    def loaded_models(self) -> list[tuple[str, int]]:
        """(name, version) of every active model."""
        return [(loaded.name, loaded.version) for loaded in self.models.loaded()]

    def warm(self) -> None:
        """Ready inference for every active model on the calling thread (each worker, at start-up)."""
        for loaded in self.models.loaded():
            loaded.graph.warm()

    def default_model(self, configured: str | None = None) -> str | None:
        """The model for requests that name none: the configured one, else the only one loaded."""
        if configured:
            return configured
        loaded = self.models.loaded()
        return loaded[0].name if len(loaded) == 1 else None

    def status(self) -> dict[str, Any]:
        """The models (active versions, failures) and the business-logic guest, for the `models` method."""
        business = self.business
        return {
            "models": [status.to_dict() for status in self.models.statuses()],
            "guest": {
                "sha256": business.guest.digest,
                "args": list(business.args_template) if business.args_template is not None else None,
            },
        }

    def set_guest(
        self, wasm: bytes, name: str = "classify", args_template: tuple[str, ...] | None = None
    ) -> Guest:
        """Replace the business-logic guest; requests in flight finish on the old one."""
        if args_template is not None:
            guest_args.check_template(args_template)
        self.business = BusinessGuest(self.host.load_guest(wasm, name), args_template)
        return self.business.guest

    def classify(
        self, image: bytes, model: str, top_k: int = DEFAULT_TOP_K, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Classify one image; `timeout_s` shortens the configured deadline (a caller's own)."""
        return self.run(image, model, top_k, timeout_s).result()

    def run(
        self, image: bytes, model: str, top_k: int = DEFAULT_TOP_K, timeout_s: float | None = None
    ) -> Outcome:
        """Classify one image through the stages; never raises a ClassifierError (the outcome has it)."""
        outcome = Outcome(model=model)
        stages = _Stages(outcome.timings)
        try:
            business = self.business  # one guest for the whole request, even if it is replaced meanwhile
            loaded, call = self._admit(image, model, top_k, timeout_s)
            outcome.model, outcome.version = loaded.name, loaded.version
            business = self._business_for(loaded, business)
            stages.end("admit")
            host_labels = self.host_attaches_labels(business)
            if business.args_template is None:
                result = self.run_default_guest(
                    business.guest, loaded, image, top_k, call, labels=not host_labels
                )
            else:
                result = self._run_command_guest(business, loaded, image, top_k, call)
            stages.end("guest")
            outcome.trap = result.trap_reason
            host = call.host_seconds
            outcome.timings["decode"] = host.get("decode", 0.0)
            outcome.timings["inference"] = host.get("invoke", 0.0)
            outcome.timings["guest"] -= outcome.timings["decode"] + outcome.timings["inference"]
            body = _response_body(result)
            if business.args_template is None:
                body = _without_zero_padding(body)
            if host_labels:
                body = _with_labels(body, loaded.labels)
            stages.end("respond")
            outcome.response = {
                "model": loaded.name,
                "version": loaded.version,
                **body,
                "elapsed_ms": round(stages.total() * 1000, 3),
            }
        except ClassifierError as exc:
            outcome.error = exc
        outcome.timings["total"] = stages.total()
        return outcome

    def _admit(
        self, image: bytes, model: str, top_k: int, timeout_s: float | None
    ) -> tuple[LoadedModel, GuestCall]:
        loaded = self.model(model)
        num_classes = loaded.stored.manifest.num_classes
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_classes:
            raise invalid_argument(f"top_k must be an integer from 1 to {num_classes}, got {top_k!r}")
        if not image:
            raise invalid_argument("the image is empty")
        limits = self.settings.limits
        if timeout_s is not None and timeout_s < limits.timeout_s:
            limits = replace(limits, timeout_s=max(timeout_s, 0.0))
        call = GuestCall(
            limits=limits, named_graphs={loaded.name: loaded.graph}, graph_cache=self.graph_cache
        )
        return loaded, call

    def _business_for(self, loaded: LoadedModel, service_guest: BusinessGuest) -> BusinessGuest:
        """The guest of the model's version if it names one, else the service's."""
        manifest = loaded.stored.manifest
        if manifest.guest is None or self.guest_overrides_models:
            return service_guest
        try:
            guest, stored_args = self.model_guests.get(manifest.guest)
        except ClassifierError as exc:
            raise ClassifierError(
                exc.kind,
                f"model {loaded.name!r} version {loaded.version} names guest {manifest.guest!r}: "
                f"{exc.message}",
            ) from exc
        return BusinessGuest(guest, manifest.guest_args if manifest.guest_args is not None else stored_args)

    def host_attaches_labels(self, business: BusinessGuest) -> bool:
        """Whether the host, not the guest, puts the labels into the predictions (the built-in
        guest on the default interface: it runs without the labels file)."""
        return business.args_template is None and business.guest.digest == self.builtin_guest_digest

    def run_default_guest(
        self,
        guest: Guest,
        loaded: LoadedModel,
        image: bytes,
        top_k: int,
        call: GuestCall,
        *,
        labels: bool = True,
    ) -> GuestResult:
        """A run of a guest with the default interface (`labels=False`: without its labels file)."""
        labels_path = loaded.stored.labels_path if labels else None
        args = default_guest.arguments(
            loaded.name, loaded.stored.manifest.spec, labels_path.name if labels_path else None, top_k
        )
        model_dir = Preopen(loaded.stored.directory, MODEL_DIR_IN_GUEST)
        return self.host.run(guest, args, call=call, stdin=image, preopens=[model_dir])

    def _run_command_guest(
        self,
        business: BusinessGuest,
        loaded: LoadedModel,
        image: bytes,
        top_k: int,
        call: GuestCall,
    ) -> GuestResult:
        """Run a guest written for WasmEdge: the model by path, the image on stdin and,
        if its args name it, as a file in a read-only directory of its own."""
        template = business.args_template or ()
        labels = loaded.stored.labels_path
        values: dict[str, str | None] = {
            "model_path": f"{MODEL_DIR_IN_GUEST}/{loaded.stored.manifest.model_file}",
            "labels_path": f"{MODEL_DIR_IN_GUEST}/{labels.name}" if labels is not None else None,
            "model_name": loaded.name,
            "top_k": str(top_k),
        }
        preopens = [Preopen(loaded.stored.directory, MODEL_DIR_IN_GUEST)]
        with ExitStack() as cleanup:
            if guest_args.uses(template, "image_path"):
                image_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="classifier-in-")))
                image_file = image_dir / f"image.{image_extension(image)}"
                image_file.write_bytes(image)
                preopens.append(Preopen(image_dir, guest_args.IMAGE_DIR_IN_GUEST))
                values["image_path"] = f"{guest_args.IMAGE_DIR_IN_GUEST}/{image_file.name}"
            args = guest_args.render(template, values)
            return self.host.run(business.guest, args, call=call, stdin=image, preopens=preopens)


def _response_body(result: GuestResult) -> dict[str, Any]:
    """The guest's stdout as the response, or the error its run ended with."""
    notes = "; ".join(result.call.notes)
    limits = result.call.limits
    # Output first: a guest that ignores failed writes keeps writing until its deadline.
    if result.output_overflow:
        raise ClassifierError(
            ErrorKind.RESOURCE_EXHAUSTED, f"the guest wrote more than {limits.output_bytes} bytes of output"
        )
    if result.deadline_exceeded:
        raise ClassifierError(
            ErrorKind.DEADLINE_EXCEEDED, f"the guest ran past its deadline of {limits.timeout_s:g} s"
        )
    failed = result.trap is not None or result.exit_code not in (
        Exit.OK,
        Exit.BAD_IMAGE,
        Exit.MODEL_NOT_FOUND,
    )
    if failed and result.memory_bytes + MEMORY_HEADROOM > limits.memory_bytes:
        # memory.grow fails silently at the cap; a guest failing right there ran out of memory.
        ended = (
            f"trapped: {result.trap}" if result.trap is not None else f"exited with code {result.exit_code}"
        )
        raise ClassifierError(
            ErrorKind.RESOURCE_EXHAUSTED,
            f"the guest ran out of memory (limit {limits.memory_bytes >> 20} MiB) and {ended}",
        )
    if result.trap is not None:
        raise ClassifierError(ErrorKind.GUEST_FAILED, f"the guest trapped: {result.trap}")
    if result.exit_code == Exit.BAD_IMAGE:
        raise invalid_argument(f"the image could not be decoded: {notes or _last_line(result.stderr)}")
    if result.exit_code == Exit.MODEL_NOT_FOUND:
        raise ClassifierError(ErrorKind.NOT_FOUND, _last_line(result.stderr) or "model not found")
    if result.exit_code != 0:
        detail = "; ".join(filter(None, [_last_line(result.stderr), notes]))
        raise ClassifierError(
            ErrorKind.GUEST_FAILED, f"the guest exited with code {result.exit_code}: {detail}"
        )
    text = result.stdout.decode("utf-8", errors="replace").strip()
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return {"output": text}  # a guest printing plain text
    return body if isinstance(body, dict) else {"output": body}


def _without_zero_padding(body: dict[str, Any]) -> dict[str, Any]:
    """A default-interface guest's top-k without the trailing predictions of score exactly 0
    (but the first): a model with fewer non-zero classes than asked for would pad the list
    with classes it did not predict at all."""
    predictions = body.get("predictions")
    if not isinstance(predictions, list):
        return body
    kept = list(predictions)
    while len(kept) > 1 and isinstance(kept[-1], dict) and kept[-1].get("score") == 0:
        kept.pop()
    return body if len(kept) == len(predictions) else {**body, "predictions": kept}


def _with_labels(body: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """The predictions with each index's label (null past the model's labels, as the guest did)."""
    predictions = body.get("predictions")
    if not isinstance(predictions, list):
        return body
    labelled = []
    for prediction in predictions:
        index = prediction.get("index") if isinstance(prediction, dict) else None
        if isinstance(index, int) and not isinstance(index, bool):
            prediction = {**prediction, "label": labels[index] if 0 <= index < len(labels) else None}
        labelled.append(prediction)
    return {**body, "predictions": labelled}


def _last_line(data: bytes) -> str:
    lines = data.decode("utf-8", errors="replace").strip().splitlines()
    return lines[-1] if lines else ""
