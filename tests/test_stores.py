"""One contract, two stores: every test here runs against the local directory store and
the Dapr state store (through a real DaprClient and the daprd double's state API)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MODELS
from dapr.clients import DaprClient
from daprd import FakeDaprd
from service_process import new_daprd, sidecar_env

from service.errors import ClassifierError, ErrorKind
from service.stores.base import GUEST_FILE, ModelManifest, Store
from service.stores.dapr import BULK_GET_BYTES, CHUNK_BYTES, DaprStore
from service.stores.local import LocalStore

BIRDS = (MODELS / "aiy_birds_v1" / "model.tflite").read_bytes()
BIRDS_LABELS = (MODELS / "aiy_birds_v1" / "labels.txt").read_text().splitlines()
MOBILENET = (MODELS / "mobilenet_v2_1.0_224_quant" / "model.tflite").read_bytes()
METADATA_MODEL = (MODELS / "mobilenet_v1_0.25_224_quant_with_metadata" / "model.tflite").read_bytes()
STORE_NUMBERS = itertools.count()
GUEST = (Path(__file__).resolve().parents[1] / "wasm" / "bin" / "classify.wasm").read_bytes()


@pytest.fixture(scope="module")
def daprd() -> Iterator[FakeDaprd]:
    sidecar = new_daprd()
    with sidecar_env(sidecar):
        yield sidecar
    sidecar.close()


@pytest.fixture(params=["local", "dapr"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    request.getfixturevalue("daprd")
    with DaprClient() as client:
        # Each test gets a state store of its own, so tests do not see each other's keys.
        yield DaprStore(client, tmp_path / "cache", store_name=f"statestore-{next(STORE_NUMBERS)}")


def error_kind(exc: pytest.ExceptionInfo[ClassifierError]) -> ErrorKind:
    return exc.value.kind


def test_put_then_get_gives_the_same_bytes_and_labels(store: Store) -> None:
    manifest = store.put("birds", BIRDS, BIRDS_LABELS)
    assert (manifest.name, manifest.version, manifest.size) == ("birds", 1, len(BIRDS))
    assert manifest.has_labels and manifest.num_classes == 965
    assert list(manifest.spec.inputs[0].shape) == [1, 224, 224, 3]
    stored = store.get("birds")
    assert stored.manifest == manifest
    assert stored.model_path.read_bytes() == BIRDS
    assert stored.labels_path is not None
    assert stored.labels_path.read_text().splitlines() == BIRDS_LABELS
    assert store.manifest("birds") == manifest


def test_the_model_file_is_named_by_its_encoding(store: Store) -> None:
    """The stores know no framework: the manifest says the model's encoding (the inference
    backend's), and the file on disk takes that backend's suffix. A manifest written before the
    field existed reads as TFLite."""
    manifest = store.put("birds", BIRDS, BIRDS_LABELS)
    assert manifest.encoding == "tensorflowlite"
    assert store.get("birds").model_path.name == "model.tflite"
    older = {k: v for k, v in manifest.to_dict().items() if k != "encoding"}
    assert ModelManifest.from_dict(older) == manifest


def test_each_put_is_a_new_version(store: Store) -> None:
    store.put("m", BIRDS, BIRDS_LABELS)
    second = store.put("m", BIRDS, [label.upper() for label in BIRDS_LABELS])
    assert second.version == 2
    assert store.manifest("m").version == 2
    assert store.get("m").labels_path.read_text().splitlines()[166] == "AIX GALERICULATA"
    third = store.put("m", MOBILENET)
    assert third.version == 3 and third.num_classes == 1001
    stored = store.get("m")
    assert stored.model_path.read_bytes() == MOBILENET
    assert stored.labels_path is not None  # from the model's own metadata, not the last version's
    assert len(stored.labels_path.read_text().splitlines()) == 1001


def test_a_put_of_what_is_stored_stores_nothing(store: Store) -> None:
    first = store.put("m", BIRDS, BIRDS_LABELS)
    again = store.put("m", BIRDS, list(BIRDS_LABELS), progress=lambda done, total: pytest.fail("uploaded"))
    assert again.unchanged and not first.unchanged
    assert again == first and store.manifest("m") == first and store.manifest("m").version == 1
    assert store.put("m", BIRDS, [label.upper() for label in BIRDS_LABELS]).version == 2  # other labels
    assert store.put("m", BIRDS, BIRDS_LABELS).version == 3  # only the current version counts

    guest = store.put_guest("g", GUEST, ("{model_path}",))
    same = store.put_guest("g", GUEST, ("{model_path}",))
    assert same.unchanged and same == guest and store.guest_manifest("g").version == 1
    assert store.put_guest("g", GUEST).version == 2  # other args: a new version
    assert [g.version for g in store.list_guests()] == [2]


def test_labels_default_to_the_model_metadata(store: Store) -> None:
    manifest = store.put("meta", METADATA_MODEL)
    assert manifest.has_labels
    labels = store.get("meta").labels_path.read_text().splitlines()
    assert len(labels) == 1001 and "cheeseburger" in labels


def with_metadata_files(model: bytes, files: dict[str, bytes]) -> bytes:
    """The model with a metadata archive appended, as TFLite metadata's associated files are."""
    import io
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, data in files.items():
            zipped.writestr(name, data)
    return model + archive.getvalue()


def test_metadata_label_files_that_do_not_fit_are_passed_over(store: Store) -> None:
    """Only a UTF-8 .txt file of one line per class is taken; none fits: no labels."""
    misfits = {
        "labels.md": "\n".join(BIRDS_LABELS).encode(),  # not a .txt
        "labels-latin1.txt": b"caf\xe9\n" * len(BIRDS_LABELS),  # one line per class, not UTF-8
        "short.txt": b"one\ntwo\n",  # not one line per class
    }
    assert not store.put("misfits", with_metadata_files(BIRDS, misfits)).has_labels
    assert store.get("misfits").labels_path is None
    fitting = {**misfits, "birds.txt": ("\n".join(BIRDS_LABELS) + "\n").encode()}
    assert store.put("fits", with_metadata_files(BIRDS, fitting)).has_labels
    assert store.get("fits").labels_path.read_text().splitlines() == BIRDS_LABELS


def test_list_and_remove(store: Store) -> None:
    assert store.list_models() == []
    store.put("b", BIRDS)
    store.put("a", MOBILENET)
    assert [m.name for m in store.list_models()] == ["a", "b"]
    store.remove("b")
    assert [m.name for m in store.list_models()] == ["a"]
    for call in (lambda: store.manifest("b"), lambda: store.get("b"), lambda: store.remove("b")):
        with pytest.raises(ClassifierError) as exc:
            call()
        assert error_kind(exc) == ErrorKind.NOT_FOUND
    assert store.put("b", BIRDS).version == 1  # the name can be used again, from the start


@pytest.mark.parametrize(
    ("name", "model", "labels", "message"),
    [
        ("../escape", BIRDS, None, "invalid name"),
        ("birds", b"not a model", None, "birds"),
        ("birds", BIRDS, ["just one label"], "965 classes"),
    ],
)
def test_bad_uploads_are_refused_and_store_nothing(
    store: Store, name: str, model: bytes, labels: list[str] | None, message: str
) -> None:
    with pytest.raises(ClassifierError) as exc:
        store.put(name, model, labels)
    assert error_kind(exc) == ErrorKind.INVALID_ARGUMENT and message in exc.value.message
    assert store.list_models() == []


def test_upload_progress_reaches_the_total(store: Store) -> None:
    seen: list[tuple[int, int]] = []
    store.put("mobilenet", MOBILENET, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] >= len(MOBILENET)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_guests_put_get_list_remove(store: Store) -> None:
    first = store.put_guest("wasmedge-style", GUEST, ("{model_path}", "{image_path}"))
    assert (first.version, first.size, first.args) == (1, len(GUEST), ("{model_path}", "{image_path}"))
    second = store.put_guest("wasmedge-style", GUEST)
    assert second.version == 2 and second.args is None
    stored = store.get_guest("wasmedge-style")
    assert stored.wasm == GUEST and stored.manifest == second
    assert store.guest_manifest("wasmedge-style") == second
    assert [g.name for g in store.list_guests()] == ["wasmedge-style"]
    store.remove_guest("wasmedge-style")
    assert store.list_guests() == []
    with pytest.raises(ClassifierError) as exc:
        store.get_guest("wasmedge-style")
    assert error_kind(exc) == ErrorKind.NOT_FOUND


def test_invalid_guest_is_refused(store: Store) -> None:
    with pytest.raises(ClassifierError) as exc:
        store.put_guest("broken", b"\0asm\x01\0\0\0garbage")
    assert error_kind(exc) == ErrorKind.INVALID_ARGUMENT and "not a valid wasm module" in exc.value.message
    assert store.list_guests() == []


def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, the size unchanged
    path.write_bytes(bytes(data))


def guest_file(store: Store, name: str) -> Path:
    """The file get_guest() reads first: the stored copy (local) or the disk cache (Dapr)."""
    if isinstance(store, LocalStore):
        return store._guests.current_dir(name) / GUEST_FILE
    assert isinstance(store, DaprStore)
    return store.cache_dir / "guests" / f"{store.guest_manifest(name).sha256}.wasm"


def test_damaged_bytes_on_disk_are_never_handed_out(store: Store) -> None:
    """Every read is checked against the manifest's sha256: the local store's own files and the
    Dapr store's disk cache alike. The local store has no other copy (a store fault: the registry
    keeps serving the previous version); the Dapr store fetches its copy again from the state store."""
    store.put("birds", BIRDS, BIRDS_LABELS)
    damage(store.get("birds").model_path)
    store.put_guest("logic", GUEST)
    store.get_guest("logic")  # the Dapr store caches it on disk
    damage(guest_file(store, "logic"))
    if isinstance(store, LocalStore):
        with pytest.raises(ClassifierError) as model_fault:
            store.get("birds")
        assert error_kind(model_fault) == ErrorKind.INTERNAL
        assert (
            model_fault.value.message
            == "model 'birds' version 1: model.tflite does not match the manifest's sha256"
        )
        with pytest.raises(ClassifierError) as guest_fault:
            store.get_guest("logic")
        assert (
            guest_fault.value.message
            == "guest 'logic' version 1: guest.wasm does not match the manifest's sha256"
        )
        # an upload of the same bytes repairs it: a new version, not "already stored"
        repaired = store.put("birds", BIRDS, BIRDS_LABELS)
        assert (repaired.version, repaired.unchanged) == (2, False)
    assert store.get("birds").model_path.read_bytes() == BIRDS
    assert store.put_guest("logic", GUEST).version in (1, 2)
    assert store.get_guest("logic").wasm == GUEST


# -- what only the local store has: its directory layout --------------------------------------


def test_local_store_layout_is_what_its_docstring_says(tmp_path: Path) -> None:
    """Operators and the image's cache volume rely on this layout (service/stores/local.py)."""
    store = LocalStore(tmp_path)
    store.put("birds", BIRDS, BIRDS_LABELS)
    store.put_guest("logic", GUEST)
    assert (tmp_path / "models" / "birds" / "current").read_text() == "1\n"
    assert sorted(p.name for p in (tmp_path / "models" / "birds" / "1").iterdir()) == [
        "labels.txt",
        "manifest.json",
        "model.tflite",
    ]
    assert (tmp_path / "guests" / "logic" / "current").read_text() == "1\n"
    assert sorted(p.name for p in (tmp_path / "guests" / "logic" / "1").iterdir()) == [
        "guest.wasm",
        "manifest.json",
    ]
    assert not [p for p in tmp_path.rglob(".staging-*")]  # nothing half-written is left


def test_local_store_keeps_the_current_version_and_the_one_before(tmp_path: Path) -> None:
    """A request that started on the previous version still reads its files; older ones go."""
    store = LocalStore(tmp_path)
    for labels in (
        BIRDS_LABELS,
        [label.upper() for label in BIRDS_LABELS],
        [label.lower() for label in BIRDS_LABELS],
    ):
        store.put("birds", BIRDS, labels)
    assert sorted(p.name for p in (tmp_path / "models" / "birds").iterdir()) == ["2", "3", "current"]


def test_local_store_not_found_names_the_kind_and_the_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for call, kind in ((lambda: store.get("nosuch"), "model"), (lambda: store.get_guest("nosuch"), "guest")):
        with pytest.raises(ClassifierError) as exc:
            call()
        assert (exc.value.kind, exc.value.message) == (
            ErrorKind.NOT_FOUND,
            f"{kind} 'nosuch' not found in {tmp_path}",
        )
    store.put("birds", BIRDS)
    store.remove("birds")  # its directory is gone, not only its `current`
    with pytest.raises(ClassifierError) as removed:
        store.get("birds")
    assert removed.value.message == f"model 'birds' not found in {tmp_path}"


def test_an_unlabelled_model_put_twice_is_stored_once(store: Store) -> None:
    unlabelled = (MODELS / "mnist_lstm_uint8" / "model.tflite").read_bytes()  # no labels given or inside
    first = store.put("plain", unlabelled)
    assert not first.has_labels
    again = store.put("plain", unlabelled)
    assert again.unchanged and again.version == 1


def test_guest_upload_progress_reaches_the_total(store: Store) -> None:
    seen: list[tuple[int, int]] = []
    store.put_guest("logic", GUEST, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (seen[-1][1], seen[-1][1]) and seen[-1][1] >= len(GUEST)


# -- what only the Dapr store has: chunks, the disk cache, an unreachable sidecar -------------


def test_dapr_store_an_upload_keeps_its_chunks_while_another_commits(
    daprd: FakeDaprd, tmp_path: Path
) -> None:
    """An upload of the bytes of the version two back, while another upload commits: the other's
    clean-up of that old version must not delete the chunks this upload has just written (they
    shared keys when chunks were keyed by digest; seen as a torn model in a real-daprd race)."""
    other = (MODELS / "mobilenet_v1_0.25_224_quant_with_metadata" / "model.tflite").read_bytes()
    with DaprClient() as client:
        store = DaprStore(client, tmp_path / "uploader")
        store.put("m", BIRDS)  # v1
        store.put("m", MOBILENET)  # v2

        def commit_another_meanwhile(done: int, total: int) -> None:
            if done == total:  # every chunk of this upload written, its manifest not yet
                assert store.put("m", other).version == 3  # its clean-up: v1's chunks

        assert store.put("m", BIRDS, progress=commit_another_meanwhile).version == 4
        fresh = DaprStore(client, tmp_path / "reader")  # no disk cache: reads the chunks
        assert fresh.get("m").model_path.read_bytes() == BIRDS


def test_dapr_store_keeps_chunks_within_the_body_limit_and_caches_on_disk(
    daprd: FakeDaprd, tmp_path: Path
) -> None:
    with DaprClient() as client:
        uploader = DaprStore(client, tmp_path / "uploader")
        uploader.put("mobilenet", MOBILENET)
        chunks = [
            v for k, v in daprd.state("statestore").items() if k.startswith("statestore||model/mobilenet/")
        ]
        assert len(chunks) == -(-len(MOBILENET) // CHUNK_BYTES) and max(map(len, chunks)) <= CHUNK_BYTES

        reader = DaprStore(client, tmp_path / "reader")
        first = reader.get("mobilenet")
        bulk_gets = daprd.calls["GetBulkState"]
        again = DaprStore(client, tmp_path / "reader").get("mobilenet")  # a restarted service
        assert daprd.calls["GetBulkState"] == bulk_gets  # served from the disk cache
        assert again.model_path.read_bytes() == first.model_path.read_bytes() == MOBILENET


def test_dapr_store_unreachable_is_unavailable_not_a_crash(daprd: FakeDaprd, tmp_path: Path) -> None:
    with DaprClient() as client:
        store = DaprStore(client, tmp_path / "cache")
        store.put("birds", BIRDS)
        daprd.stop()
        try:
            with pytest.raises(ClassifierError) as exc:
                store.manifest("birds")
            assert error_kind(exc) == ErrorKind.UNAVAILABLE
        finally:
            daprd.start()
        # The same client recovers once gRPC reconnects (its backoff is a second or so).
        deadline = time.monotonic() + 15
        while True:
            try:
                assert store.manifest("birds").name == "birds"
                break
            except ClassifierError as exc:
                assert exc.kind == ErrorKind.UNAVAILABLE and time.monotonic() < deadline
                time.sleep(0.2)


def test_dapr_store_backend_fault_is_unavailable(daprd: FakeDaprd, tmp_path: Path) -> None:
    """Real daprd answers INTERNAL when Redis is down (tests/test_real_dapr_state.py): transient."""
    import grpc

    with DaprClient() as client:
        store = DaprStore(client, tmp_path / "cache", store_name="statestore-backend-fault")
        store.put("birds", BIRDS)
        daprd.fail_next("GetState", grpc.StatusCode.INTERNAL)
        with pytest.raises(ClassifierError) as exc:
            store.manifest("birds")
        assert error_kind(exc) == ErrorKind.UNAVAILABLE
        assert store.manifest("birds").version == 1


# -- a model's guest (issue 19) -----------------------------------------------------------


def test_a_models_guest_is_versioned_with_it(store: Store) -> None:
    first = store.put("birds", BIRDS, BIRDS_LABELS, guest="describe")
    assert (first.version, first.guest, first.guest_args) == (1, "describe", None)
    assert store.manifest("birds").guest == "describe" and store.get("birds").manifest == first
    again = store.put("birds", BIRDS, BIRDS_LABELS, guest="describe")
    assert again.unchanged and again.version == 1
    other = store.put(
        "birds", BIRDS, BIRDS_LABELS, guest="logic", guest_args=("{model_path}", "{image_path}")
    )
    assert (other.version, other.guest, other.guest_args) == (2, "logic", ("{model_path}", "{image_path}"))
    assert store.put("birds", BIRDS, BIRDS_LABELS).guest is None  # a put says the whole version
    assert [m.guest for m in store.list_models()] == [None]


def test_set_guest_stores_a_new_version_of_the_same_model(store: Store) -> None:
    store.put("birds", BIRDS, BIRDS_LABELS)
    changed = store.set_guest("birds", "describe")
    assert (changed.version, changed.guest, changed.unchanged) == (2, "describe", False)
    stored = store.get("birds")
    assert stored.manifest.version == 2 and stored.manifest.guest == "describe"
    assert stored.model_path.read_bytes() == BIRDS and stored.labels_path is not None
    assert stored.labels_path.read_text().splitlines() == BIRDS_LABELS
    assert store.set_guest("birds", "describe").unchanged
    assert store.set_guest("birds", "describe", ("{image_path}",)).version == 3
    assert store.set_guest("birds", None).version == 4
    # a new upload after guest changes: the chunks each version reads are still there
    assert store.put("birds", MOBILENET).version == 5
    assert store.set_guest("birds", "mnist").version == 6
    assert store.get("birds").model_path.read_bytes() == MOBILENET
    assert store.put("birds", BIRDS, BIRDS_LABELS, guest="mnist").version == 7
    assert store.get("birds").model_path.read_bytes() == BIRDS


def test_a_models_guest_is_a_name(store: Store) -> None:
    with pytest.raises(ClassifierError, match="not a file") as exc:
        store.put("birds", BIRDS, BIRDS_LABELS, guest="logic.wasm")
    assert error_kind(exc) == ErrorKind.INVALID_ARGUMENT
    with pytest.raises(ClassifierError, match="name the guest too"):
        store.put("birds", BIRDS, BIRDS_LABELS, guest_args=("{image_path}",))
    with pytest.raises(ClassifierError, match="unknown guest args placeholder"):
        store.put("birds", BIRDS, BIRDS_LABELS, guest="logic", guest_args=("{nosuch}",))
    with pytest.raises(ClassifierError) as missing:
        store.set_guest("nosuch", "describe")
    assert error_kind(missing) == ErrorKind.NOT_FOUND
    assert store.list_models() == []


# -- the Dapr store's commits and reads when something else happens meanwhile ----------------


def dapr_store(tmp_path: Path, cache: str = "cache") -> tuple[DaprStore, str]:
    """A Dapr store on a state store of its own (the module's double); its name."""
    name = f"statestore-{next(STORE_NUMBERS)}"
    return DaprStore(DaprClient(), tmp_path / cache, store_name=name), name


def chunk_keys(daprd: FakeDaprd, store_name: str, key: str) -> list[str]:
    return [k for k in daprd.state(store_name) if k.startswith(f"{store_name}||{key}/")]


def test_dapr_store_an_identical_upload_committed_meanwhile_is_the_answer(
    daprd: FakeDaprd, tmp_path: Path
) -> None:
    """Two uploads of the same model: the one that commits second stores nothing, drops the
    chunks it wrote and answers the first one's version as unchanged."""
    store, name = dapr_store(tmp_path)

    def upload_the_same_meanwhile(done: int, total: int) -> None:
        if done == total:
            assert store.put("m", BIRDS, BIRDS_LABELS).version == 1

    answer = store.put("m", BIRDS, BIRDS_LABELS, progress=upload_the_same_meanwhile)
    assert (answer.version, answer.unchanged) == (1, True)
    assert len(chunk_keys(daprd, name, "model/m")) == -(-len(BIRDS) // CHUNK_BYTES)  # one upload's
    assert store.get("m").model_path.read_bytes() == BIRDS

    def upload_the_same_guest_meanwhile(done: int, total: int) -> None:
        if done == total:
            assert store.put_guest("g", GUEST).version == 1

    guest = store.put_guest("g", GUEST, progress=upload_the_same_guest_meanwhile)
    assert (guest.version, guest.unchanged) == (1, True)
    assert len(chunk_keys(daprd, name, "guest/g")) == 1
    assert [g.name for g in store.list_guests()] == ["g"]


def test_dapr_store_a_conflicting_commit_is_tried_again_then_unavailable(
    daprd: FakeDaprd, tmp_path: Path
) -> None:
    """daprd answers ABORTED when the etag no longer matches (another write came first): the
    manifest is read again and written over it, at most COMMIT_ATTEMPTS times."""
    import grpc

    store, _ = dapr_store(tmp_path)
    store.put("birds", BIRDS, BIRDS_LABELS)
    daprd.fail_next("SaveState", grpc.StatusCode.ABORTED)
    assert store.set_guest("birds", "describe").version == 2  # the second attempt
    daprd.fail_next("SaveState", grpc.StatusCode.ABORTED, times=8)
    with pytest.raises(ClassifierError) as exc:
        store.set_guest("birds", "mnist")
    assert error_kind(exc) == ErrorKind.UNAVAILABLE
    assert exc.value.message == "model/birds was replaced by 8 other writes meanwhile; try again"
    assert store.manifest("birds").guest == "describe"

    def conflict_on_every_commit(done: int, total: int) -> None:
        if done == total:  # the chunks are written; the manifest's commits conflict
            daprd.fail_next("SaveState", grpc.StatusCode.ABORTED, times=8)

    with pytest.raises(ClassifierError) as upload:
        store.put("mobilenet", MOBILENET, progress=conflict_on_every_commit)
    assert error_kind(upload) == ErrorKind.UNAVAILABLE
    assert upload.value.message == (
        "model/mobilenet was replaced by 8 other uploads while this one committed; try again"
    )
    with pytest.raises(ClassifierError) as missing:
        store.manifest("mobilenet")
    assert error_kind(missing) == ErrorKind.NOT_FOUND

    daprd.fail_next("SaveState", grpc.StatusCode.ABORTED, times=8)  # the index's writes
    with pytest.raises(ClassifierError) as index:
        store.remove("birds")
    assert error_kind(index) == ErrorKind.UNAVAILABLE
    assert index.value.message == "the models index kept changing; try again"
    assert [m.name for m in store.list_models()] == ["birds"]


def test_dapr_store_a_backend_fault_on_commit_is_unavailable_and_stores_no_version(
    daprd: FakeDaprd, tmp_path: Path
) -> None:
    """INTERNAL on the manifest's write (Redis down, as real daprd reports it) is UNAVAILABLE, for a
    first version (first-write without etag: the key is looked at, it does not exist) and a next one."""
    import grpc

    store, _ = dapr_store(tmp_path)

    def backend_fails_on_commit(done: int, total: int) -> None:
        if done == total:
            daprd.fail_next("SaveState", grpc.StatusCode.INTERNAL)

    for attempt in ("first", "next"):
        with pytest.raises(ClassifierError) as exc:
            store.put("birds", BIRDS, BIRDS_LABELS, progress=backend_fails_on_commit)
        assert error_kind(exc) == ErrorKind.UNAVAILABLE, attempt
        assert exc.value.message == (
            f"state store {store.store_name!r} unavailable: fault injected by the daprd double on SaveState"
        )
        if attempt == "first":
            with pytest.raises(ClassifierError) as missing:
                store.manifest("birds")
            assert error_kind(missing) == ErrorKind.NOT_FOUND
            assert store.put("mobilenet", MOBILENET).version == 1
            store.remove("mobilenet")
            assert store.put("birds", MOBILENET).version == 1
    assert store.manifest("birds").version == 1
    assert store.get("birds").model_path.read_bytes() == MOBILENET


def test_dapr_store_a_manifest_that_is_not_a_json_object_is_a_store_fault(
    daprd: FakeDaprd, tmp_path: Path
) -> None:
    store, name = dapr_store(tmp_path)
    store.put("birds", BIRDS, BIRDS_LABELS)
    store.put("mobilenet", MOBILENET)
    daprd.put_raw(name, "model/mobilenet", b"[1, 2]")
    with pytest.raises(ClassifierError) as not_object:
        store.manifest("mobilenet")
    assert error_kind(not_object) == ErrorKind.INTERNAL
    assert not_object.value.message == (
        f"model/mobilenet in state store {name!r} is not valid JSON: not an object"
    )
    with pytest.raises(ClassifierError) as listed:
        store.list_models()  # a damaged manifest is not skipped: it is a fault to see
    assert listed.value.message == not_object.value.message
    daprd.put_raw(name, "model/mobilenet", b"{not json")
    with pytest.raises(ClassifierError) as not_json:
        store.get("mobilenet")
    assert error_kind(not_json) == ErrorKind.INTERNAL
    assert not_json.value.message.startswith(f"model/mobilenet in state store {name!r} is not valid JSON: ")
    # a manifest removed after the index named it (a remove meanwhile) is skipped
    daprd.delete_raw(name, "model/mobilenet")
    assert [m.name for m in store.list_models()] == ["birds"]


def test_dapr_store_an_unknown_state_store_is_a_fault_that_names_it(tmp_path: Path) -> None:
    """daprd answers INVALID_ARGUMENT for a store it has no component for: misconfiguration,
    not retried."""
    sidecar = new_daprd(state_stores=["statestore"])
    try:
        with sidecar_env(sidecar), DaprClient() as client:
            store = DaprStore(client, tmp_path / "cache", store_name="nosuch")
            with pytest.raises(ClassifierError) as exc:
                store.manifest("birds")
            assert error_kind(exc) == ErrorKind.INTERNAL
            assert exc.value.message == (
                "state store 'nosuch': StatusCode.INVALID_ARGUMENT: state store nosuch is not found"
            )
    finally:
        sidecar.close()


def test_dapr_store_a_cache_copy_without_its_model_file_is_fetched_again(
    daprd: FakeDaprd, tmp_path: Path
) -> None:
    store, _ = dapr_store(tmp_path)
    store.put("birds", BIRDS, BIRDS_LABELS)
    stored = store.get("birds")
    stored.model_path.unlink()
    bulk_gets = daprd.calls["GetBulkState"]
    again = dapr_store(tmp_path)[0]  # a restarted service on the same cache
    again.store_name = store.store_name
    assert again.get("birds").model_path.read_bytes() == BIRDS
    chunks = -(-len(BIRDS) // CHUNK_BYTES)
    assert daprd.calls["GetBulkState"] == bulk_gets + -(-chunks // (BULK_GET_BYTES // CHUNK_BYTES))


def test_dapr_store_a_copy_another_reader_cached_meanwhile_is_used(daprd: FakeDaprd, tmp_path: Path) -> None:
    """Two readers of one cache directory fetch the same version at once: the one that finishes
    second finds the other's copy in place (its own rename fails) and hands that out."""
    store, name = dapr_store(tmp_path, "uploader")
    store.put("birds", BIRDS, BIRDS_LABELS)

    class ReaderRacedByAnother(DaprClient):
        def get_bulk_state(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            other = DaprStore(DaprClient(), tmp_path / "shared", store_name=name)
            other.get("birds")  # the other reader finishes first
            return super().get_bulk_state(*args, **kwargs)  # type: ignore[arg-type]

    raced = DaprStore(ReaderRacedByAnother(), tmp_path / "shared", store_name=name)
    stored = raced.get("birds")
    assert stored.model_path.read_bytes() == BIRDS
    assert [p.name for p in (tmp_path / "shared" / "models").iterdir()] == [stored.directory.name]


def test_local_store_a_damaged_manifest_is_a_store_fault_and_an_upload_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like the Dapr store's: a manifest that is not a JSON object is a fault naming the version,
    never a raw exception (the command line showed a traceback)."""
    from service import cli

    store = LocalStore(tmp_path / "store")
    store.put("birds", BIRDS, BIRDS_LABELS)
    store.put_guest("logic", GUEST)
    (store._models.current_dir("birds") / "manifest.json").write_text("{broken")
    (store._guests.current_dir("logic") / "manifest.json").write_text("[1, 2]")
    broken = "model 'birds' version 1: manifest.json is not valid JSON: Expecting property name"
    for read in (store.manifest, store.get, lambda _: store.list_models()):
        with pytest.raises(ClassifierError) as model_fault:
            read("birds")
        assert error_kind(model_fault) == ErrorKind.INTERNAL
        assert model_fault.value.message.startswith(broken)
    for read_guest in (store.guest_manifest, store.get_guest):
        with pytest.raises(ClassifierError) as guest_fault:
            read_guest("logic")
        assert (
            guest_fault.value.message
            == "guest 'logic' version 1: manifest.json is not valid JSON: not an object"
        )
    for variable in [v for v in os.environ if v.startswith("DAPR_")]:  # the module's double: not here
        monkeypatch.delenv(variable)
    assert cli.main(["--store", str(tmp_path / "store"), "models", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"classifier: {broken}") and len(err.splitlines()) == 1
    assert store.put("birds", BIRDS, BIRDS_LABELS).version == 2  # a new version over the damaged one
    assert store.get("birds").model_path.read_bytes() == BIRDS
