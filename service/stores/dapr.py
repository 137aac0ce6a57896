"""The Dapr state store: models and guests kept as a manifest plus chunks, through the sidecar.

    models                      JSON list of model names (state stores cannot list keys)
    model/<name>                manifest: name, version, sha256, size, chunks, tensor specs, labels
    model/<name>/<sha16>/<i>    chunk i of that version, at most 1 MiB
    guests, guest/<name>, guest/<name>/<sha16>/<i>     the same for guests

Chunks stay under Dapr's default 4 MiB body limit whatever the model's size, and are read
with bulk get in batches under it. Chunk keys are named by the version's digest, so a new
upload never overwrites what a reader of the current version is fetching; the manifest
is written last, with the previous manifest's etag (first-write concurrency; on a new
name, only if the key still does not exist), so of two uploads racing on one name one
commits and the other re-reads the manifest and commits as the version after it: the
store ends with one whole manifest, and each uploader is told the version it got. The
index keys are updated the same way. Fetched versions are verified against the
manifest's sha256 and cached on local disk by digest, so a restart does not fetch them.

A sidecar answering INTERNAL for a state call is a backend fault (daprd reports Redis
being down as INTERNAL "dial tcp ...: connection refused"): it is UNAVAILABLE here, like
an unreachable sidecar, so callers retry; misconfiguration (INVALID_ARGUMENT for an
unknown store, FAILED_PRECONDITION) stays a fault.

The components set `keyPrefix: name`, so the uploader (any app id) and the service see
the same keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
from dapr.clients import DaprClient

from ..dapr_sdk import Concurrency, Consistency, StateOptions
from ..errors import ClassifierError, ErrorKind, not_found
from ..files import write_atomically
from .base import (
    LABELS_FILE,
    GuestManifest,
    ModelManifest,
    Progress,
    StoredGuest,
    StoredModel,
    check_model_guest,
    check_name,
    has_digest,
    prepare_guest,
    prepare_model,
    store_fault,
    store_unavailable,
)

CHUNK_BYTES = 1 << 20
BULK_GET_BYTES = 3 << 20  # one bulk get stays under the default 4 MiB message limits
MANIFEST_FILE = "manifest.json"
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,  # daprd: the store's backend failed (Redis down, a timeout)
    grpc.StatusCode.UNKNOWN,
}
COMMIT_ATTEMPTS = 8  # concurrent uploads of one name: re-read and commit as the next version
MODEL_FIELDS = ("labels", "guest", "guest_args")  # besides sha256: a put of the same stores nothing
_FIRST_WRITE = StateOptions(concurrency=Concurrency.first_write, consistency=Consistency.strong)

T = TypeVar("T")


class DaprStore:
    """Models and guests in a Dapr state store. Thread-safe (the client's channel is)."""

    def __init__(self, client: DaprClient, cache_dir: Path, store_name: str = "statestore") -> None:
        self.client = client
        self.store_name = store_name
        self.cache_dir = Path(cache_dir)

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
        check_name(name)
        # The version is set on commit.
        manifest, labels = prepare_model(name, model, labels, 1, guest, guest_args)
        current, _ = self._read_json(f"model/{name}")
        uploaded = {**manifest.to_dict(), "labels": labels}
        if current is not None and _same(current, uploaded, MODEL_FIELDS):
            return replace(ModelManifest.from_dict(current), unchanged=True)  # no chunk uploaded
        record = {**uploaded, **self._put_chunks(f"model/{name}", model, progress)}
        committed = self._commit_manifest(f"model/{name}", record, MODEL_FIELDS)
        self._add_to_index("models", name)
        if committed is not None:  # an identical upload committed meanwhile
            return replace(ModelManifest.from_dict(committed), unchanged=True)
        return replace(manifest, version=int(record["version"]))

    def set_guest(
        self, name: str, guest: str | None, guest_args: tuple[str, ...] | None = None
    ) -> ModelManifest:
        """The next version on the current one's chunks, written like a commit: only over the
        manifest it was made from (else re-read, so that a concurrent upload's bytes are kept)."""
        check_model_guest(guest, guest_args)
        key = f"model/{name}"
        wanted = {"guest": guest, "guest_args": list(guest_args) if guest_args is not None else None}
        for _ in range(COMMIT_ATTEMPTS):
            current, etag = self._read_json(key)
            if current is None:
                raise not_found(f"model {name!r} not found in state store {self.store_name!r}")
            if _same(current, {**current, **wanted}, ("guest", "guest_args")):
                return replace(ModelManifest.from_dict(current), unchanged=True)
            record = {
                **current,
                **wanted,
                "version": int(current["version"]) + 1,
                "created": time.time(),
                "previous": {
                    "sha256": current["sha256"],
                    "chunks": current.get("chunks", 0),
                    "chunk_prefix": _prefix_of(current),
                },
            }
            try:
                self._save_if_unchanged(key, json.dumps(record), etag)
            except _Conflict:
                continue
            stale = current.get("previous")
            if stale and _prefix_of(stale) != _prefix_of(current):
                self._delete_chunks(key, stale)
            return ModelManifest.from_dict(record)
        raise store_unavailable(f"{key} was replaced by {COMMIT_ATTEMPTS} other writes meanwhile; try again")

    def manifest(self, name: str) -> ModelManifest:
        return ModelManifest.from_dict(self._manifest_record(f"model/{name}", "model", name))

    def get(self, name: str) -> StoredModel:
        record = self._manifest_record(f"model/{name}", "model", name)
        manifest = ModelManifest.from_dict(record)
        # Keyed by content (the model's and the labels' bytes), not by name or version.
        labels_digest = hashlib.sha256(json.dumps(record.get("labels")).encode()).hexdigest()[:16]
        directory = self.cache_dir / "models" / f"{manifest.sha256}-{labels_digest}"
        if (directory / MANIFEST_FILE).exists() and not _cached_model_intact(directory, manifest):
            shutil.rmtree(directory, ignore_errors=True)  # a damaged cache copy: fetched again below
        if not (directory / MANIFEST_FILE).exists():
            model = self._get_chunks(f"model/{name}", record, f"model {name!r} version {manifest.version}")
            files = {manifest.model_file: model}
            if record.get("labels"):
                files[LABELS_FILE] = ("\n".join(record["labels"]) + "\n").encode("utf-8")
            _write_dir(directory, files, manifest.to_dict())
        return StoredModel(manifest=manifest, directory=directory)

    def list_models(self) -> list[ModelManifest]:
        return self._list_index("models", self.manifest)

    def remove(self, name: str) -> None:
        record = self._manifest_record(f"model/{name}", "model", name)
        self._remove(f"model/{name}", record, "models", name)

    # -- guests ---------------------------------------------------------------------------

    def put_guest(
        self, name: str, wasm: bytes, args: tuple[str, ...] | None = None, progress: Progress | None = None
    ) -> GuestManifest:
        check_name(name)
        manifest = prepare_guest(name, wasm, args, 1)  # the version is set on commit
        current, _ = self._read_json(f"guest/{name}")
        if current is not None and _same(current, manifest.to_dict(), ("args",)):
            return replace(GuestManifest.from_dict(current), unchanged=True)  # no chunk uploaded
        record = {**manifest.to_dict(), **self._put_chunks(f"guest/{name}", wasm, progress)}
        committed = self._commit_manifest(f"guest/{name}", record, ("args",))
        self._add_to_index("guests", name)
        if committed is not None:
            return replace(GuestManifest.from_dict(committed), unchanged=True)
        return replace(manifest, version=int(record["version"]))

    def guest_manifest(self, name: str) -> GuestManifest:
        return GuestManifest.from_dict(self._manifest_record(f"guest/{name}", "guest", name))

    def get_guest(self, name: str) -> StoredGuest:
        record = self._manifest_record(f"guest/{name}", "guest", name)
        manifest = GuestManifest.from_dict(record)
        cached = self.cache_dir / "guests" / f"{manifest.sha256}.wasm"
        if cached.exists():
            wasm = cached.read_bytes()
            if has_digest(wasm, manifest.sha256):
                return StoredGuest(manifest=manifest, wasm=wasm)  # else a damaged cache copy: fetched again
        wasm = self._get_chunks(f"guest/{name}", record, f"guest {name!r} version {manifest.version}")
        write_atomically(cached, wasm)
        return StoredGuest(manifest=manifest, wasm=wasm)

    def list_guests(self) -> list[GuestManifest]:
        return self._list_index("guests", self.guest_manifest)

    def remove_guest(self, name: str) -> None:
        record = self._manifest_record(f"guest/{name}", "guest", name)
        self._remove(f"guest/{name}", record, "guests", name)

    # -- chunks and manifests -------------------------------------------------------------

    def _put_chunks(self, key: str, data: bytes, progress: Progress | None) -> dict[str, Any]:
        """Chunks under a prefix of this upload's own (the digest and a random part), so that no
        other upload, not even one of the same bytes, writes or deletes them."""
        prefix = f"{hashlib.sha256(data).hexdigest()[:16]}-{uuid.uuid4().hex[:12]}"
        count = max(1, -(-len(data) // CHUNK_BYTES))
        for i in range(count):
            chunk = data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]
            self._call(self.client.save_state, self.store_name, _chunk_key(key, prefix, i), chunk)
            if progress is not None:
                progress(min((i + 1) * CHUNK_BYTES, len(data)), len(data))
        return {"chunk_size": CHUNK_BYTES, "chunks": count, "chunk_prefix": prefix}

    def _get_chunks(self, key: str, record: dict[str, Any], what: str) -> bytes:
        digest, count = str(record["sha256"]), int(record["chunks"])
        chunk_size = int(record.get("chunk_size", CHUNK_BYTES))
        per_batch = max(1, BULK_GET_BYTES // chunk_size)
        chunks: dict[str, bytes] = {}
        keys = [_chunk_key(key, _prefix_of(record), i) for i in range(count)]
        for start in range(0, count, per_batch):
            batch = keys[start : start + per_batch]
            response = self._call(self.client.get_bulk_state, self.store_name, batch, parallelism=len(batch))
            for item in response.items:
                if item.error:
                    raise store_unavailable(f"{what}: reading {item.key}: {item.error}")
                chunks[item.key] = item.data if isinstance(item.data, bytes) else str(item.data).encode()
        missing = [i for i, k in enumerate(keys) if not chunks.get(k)]
        if missing:
            raise store_fault(f"{what}: chunk {missing[0]} of {count} is missing from the store")
        data = b"".join(chunks[k] for k in keys)
        if len(data) != int(record["size"]) or not has_digest(data, digest):
            raise store_fault(f"{what}: the stored bytes do not match the manifest's sha256")
        return data

    def _commit_manifest(
        self, key: str, uploaded: dict[str, Any], same_fields: tuple[str, ...]
    ) -> dict[str, Any] | None:
        """Write the manifest last, as the version after the current one, only if nobody
        replaced it meanwhile (else re-read and try again); then drop the chunks of the
        version before the previous one (a reader may still be on the previous). Sets
        `uploaded["version"]`; returns None, or the current record if it already has the same
        sha256 and `same_fields` (an identical upload committed meanwhile: nothing is written)."""
        for _ in range(COMMIT_ATTEMPTS):
            previous, etag = self._read_json(key)
            if previous is not None and _same(previous, uploaded, same_fields):
                self._delete_chunks(key, uploaded)  # this upload's own chunks: nothing refers to them
                return previous
            record = {**uploaded, "version": int(previous["version"]) + 1 if previous else 1}
            if previous:
                record["previous"] = {
                    "sha256": previous["sha256"],
                    "chunks": previous.get("chunks", 0),
                    "chunk_prefix": _prefix_of(previous),
                }
            try:
                self._save_if_unchanged(key, json.dumps(record), etag)
            except _Conflict:
                continue  # another upload committed first: this one becomes the next version
            stale = previous.get("previous") if previous else None
            if previous and stale and _prefix_of(stale) not in (_prefix_of(record), _prefix_of(previous)):
                self._delete_chunks(key, stale)
            uploaded["version"] = record["version"]
            return None
        raise store_unavailable(
            f"{key} was replaced by {COMMIT_ATTEMPTS} other uploads while this one committed; try again"
        )

    def _save_if_unchanged(self, key: str, value: str, etag: str | None) -> None:
        """Write `key` only if it still has `etag`, or with no etag only if it does not exist
        (first-write). Raises _Conflict if somebody else wrote it first."""
        try:
            self._call(self.client.save_state, self.store_name, key, value, etag=etag, options=_FIRST_WRITE)
        except ClassifierError as exc:
            if etag is not None or exc.kind != ErrorKind.UNAVAILABLE:
                raise
            # Redis answers a first-write without etag on an existing key with INTERNAL
            # "failed to set key" (not ABORTED, state/redis/redis.go Set): look.
            if self._call(self.client.get_state, self.store_name, key).data:
                raise _Conflict(f"{key} was created meanwhile") from exc
            raise

    def _delete_chunks(self, key: str, version: dict[str, Any]) -> None:
        for i in range(int(version.get("chunks", 0))):
            self._call(self.client.delete_state, self.store_name, _chunk_key(key, _prefix_of(version), i))

    def _manifest_record(self, key: str, kind: str, name: str) -> dict[str, Any]:
        record, _ = self._read_json(key)
        if record is None:
            raise not_found(f"{kind} {name!r} not found in state store {self.store_name!r}")
        return record

    def _read_json(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        response = self._call(self.client.get_state, self.store_name, key)
        if not response.data:
            return None, None
        try:
            record = json.loads(response.data)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise store_fault(f"{key} in state store {self.store_name!r} is not valid JSON: {exc}") from exc
        return record, response.etag or None

    def _add_to_index(self, index: str, name: str) -> None:
        self._update_index(index, lambda names: sorted({*names, name}))

    def _update_index(self, index: str, change: Callable[[list[str]], list[str]]) -> None:
        for _ in range(8):  # optimistic concurrency: retry on a concurrent update
            response = self._call(self.client.get_state, self.store_name, index)
            names = json.loads(response.data) if response.data else []
            updated = change(names)
            try:
                self._save_if_unchanged(index, json.dumps(updated), response.etag or None)
                return
            except _Conflict:
                continue
        raise store_unavailable(f"the {index} index kept changing; try again")

    def _list_index(self, index: str, manifest: Callable[[str], T]) -> list[T]:
        response = self._call(self.client.get_state, self.store_name, index)
        result = []
        for name in json.loads(response.data) if response.data else []:
            try:
                result.append(manifest(name))
            except ClassifierError as exc:
                if exc.kind != ErrorKind.NOT_FOUND:  # removed meanwhile
                    raise
        return result

    def _remove(self, key: str, record: dict[str, Any], index: str, name: str) -> None:
        self._update_index(index, lambda names: [n for n in names if n != name])
        self._call(self.client.delete_state, self.store_name, key)
        self._delete_chunks(key, record)
        if record.get("previous"):
            self._delete_chunks(key, record["previous"])

    def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one sidecar call, turning gRPC failures into the store's errors."""
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.ABORTED:
                raise _Conflict(details) from exc
            if code in _TRANSIENT:
                raise store_unavailable(f"state store {self.store_name!r} unavailable: {details}") from exc
            raise store_fault(f"state store {self.store_name!r}: {code}: {details}") from exc


class _Conflict(Exception):
    """An etag did not match: somebody else wrote the key first."""


def _chunk_key(key: str, prefix: str, index: int) -> str:
    return f"{key}/{prefix}/{index}"


def _prefix_of(version: dict[str, Any]) -> str:
    """Where a version's chunks are: its upload's own prefix (versions stored before there was
    one: the first 16 hex digits of the digest)."""
    return str(version.get("chunk_prefix") or str(version["sha256"])[:16])


def _cached_model_intact(directory: Path, manifest: ModelManifest) -> bool:
    """The disk cache is checked like the store: a copy that no longer matches its digest is not used."""
    try:
        return has_digest((directory / manifest.model_file).read_bytes(), manifest.sha256)
    except OSError:
        return False


def _write_dir(directory: Path, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".staging-"))
    try:
        for file_name, data in files.items():
            (staging / file_name).write_bytes(data)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        staging.chmod(0o755)
        os.replace(staging, directory)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (directory / MANIFEST_FILE).exists():  # not another thread's finished copy
            raise


def _same(current: dict[str, Any], uploaded: dict[str, Any], same_fields: tuple[str, ...]) -> bool:
    """The current manifest record already holds what is uploaded: the same sha256 and
    `same_fields` (models: labels and guest; guests: args)."""
    return all(current.get(key) == uploaded.get(key) for key in ("sha256", *same_fields))
