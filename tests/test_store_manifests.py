"""What every store checks and keeps (service/stores/base.py), in process: names at their exact bounds,
a model's guest, uploads refused with the reason, manifests read back as written (and as older versions
wrote them), and stored bytes verified against their digest on every read.

tests/test_stores.py checks the two stores against this contract; these call the shared code directly,
so mutation testing (tools/mutation.py) sees each check.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import wasmtime
from conftest import MODELS, ROOT

from service.errors import ClassifierError, ErrorKind
from service.inference.model import ModelSpec, TensorSpec
from service.stores.base import (
    MAX_GUEST_ARGS,
    GuestManifest,
    ModelManifest,
    StoredModel,
    check_model_guest,
    check_name,
    has_digest,
    prepare_guest,
    prepare_model,
    read_verified,
    store_fault,
    store_unavailable,
)

BIRDS = (MODELS / "aiy_birds_v1" / "model.tflite").read_bytes()
BIRDS_LABELS = (MODELS / "aiy_birds_v1" / "labels.txt").read_text().splitlines()
UNLABELLED = (MODELS / "mnist_lstm_uint8" / "model.tflite").read_bytes()  # no labels given or inside
METADATA_MODEL = (MODELS / "mobilenet_v1_0.25_224_quant_with_metadata" / "model.tflite").read_bytes()
GUEST = (ROOT / "wasm" / "bin" / "classify.wasm").read_bytes()
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', not starting with '.', '_' or '-'"


def refused(call: object, *args: object, **kwargs: object) -> ClassifierError:
    assert callable(call)
    with pytest.raises(ClassifierError) as failed:
        call(*args, **kwargs)
    return failed.value


def test_a_name_is_1_to_64_characters_of_the_allowed_ones() -> None:
    for name in ("a", "A" * 64, "birds_v1.2-b", "0", "9.-_"):
        assert check_name(name) == name
    for name in ("", "a" * 65, ".hidden", "_x", "-x", "a b", "a/b", "a\n", "é", "a:b"):
        error = refused(check_name, name)
        assert error.kind == ErrorKind.INVALID_ARGUMENT
        assert error.message == f"invalid name {name!r}: {NAME_RULE}"


def test_store_errors_are_of_their_kinds() -> None:
    assert (
        store_unavailable("down").kind == ErrorKind.UNAVAILABLE
        and store_unavailable("down").message == "down"
    )
    assert store_fault("bad").kind == ErrorKind.INTERNAL and store_fault("bad").message == "bad"


def test_a_stored_file_is_handed_out_only_with_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"model bytes")
    digest = hashlib.sha256(b"model bytes").hexdigest()
    assert has_digest(b"model bytes", digest) and not has_digest(b"model bytez", digest)
    assert read_verified(path, digest, "birds v1") == b"model bytes"
    path.write_bytes(b"model bytez")  # damaged on disk
    error = refused(read_verified, path, digest, "birds v1")
    assert error.kind == ErrorKind.INTERNAL
    assert error.message == "birds v1: model.tflite does not match the manifest's sha256"
    path.unlink()
    error = refused(read_verified, path, digest, "birds v1")
    assert error.kind == ErrorKind.INTERNAL
    assert error.message == "birds v1: model.tflite cannot be read (No such file or directory)"


def test_a_models_guest_is_a_valid_name_with_valid_args() -> None:
    check_model_guest(None, None)
    check_model_guest("detector", None)
    check_model_guest("detector", ("{image_path}",) * MAX_GUEST_ARGS)
    cases = {
        (None, ("x",)): "guest args are for a model's guest: name the guest too",
        (
            "guest.wasm",
            None,
        ): "a model's guest is a stored or shipped guest's name, not a file ('guest.wasm'): "
        "store it first with `classifier guests put NAME FILE.wasm`",
        ("dir/guest", None): "a model's guest is a stored or shipped guest's name, not a file ('dir/guest'): "
        "store it first with `classifier guests put NAME FILE.wasm`",
        (".guest", None): f"invalid name '.guest': {NAME_RULE}",
        ("detector", ("x",) * (MAX_GUEST_ARGS + 1)): f"more than {MAX_GUEST_ARGS} guest arguments",
    }
    for (guest, args), message in cases.items():
        error = refused(check_model_guest, guest, args)
        assert error.kind == ErrorKind.INVALID_ARGUMENT and error.message == message
    error = refused(check_model_guest, "detector", ("{nonsense}",))
    assert error.message.startswith("unknown guest args placeholder {nonsense} (known: ")


def test_prepare_model_reads_the_model_and_checks_its_labels() -> None:
    manifest, labels = prepare_model(
        "birds", BIRDS, BIRDS_LABELS, 3, guest="detector", guest_args=("{image_path}",)
    )
    assert (manifest.name, manifest.version, manifest.size) == ("birds", 3, len(BIRDS))
    assert (
        manifest.sha256 == hashlib.sha256(BIRDS).hexdigest()
        and manifest.has_labels
        and labels == BIRDS_LABELS
    )
    assert manifest.num_classes == len(BIRDS_LABELS) == 965
    assert (manifest.guest, manifest.guest_args) == ("detector", ("{image_path}",))
    assert manifest.encoding == "tensorflowlite" and manifest.model_file == "model.tflite"
    assert manifest.created > 0 and not manifest.unchanged

    error = refused(prepare_model, "birds", BIRDS, BIRDS_LABELS[:-1], 1)
    assert error.kind == ErrorKind.INVALID_ARGUMENT
    assert error.message == "birds: the labels file has 964 lines, the model has 965 classes"
    error = refused(prepare_model, "birds", b"not a model", None, 1)
    assert error.kind == ErrorKind.INVALID_ARGUMENT and error.message.startswith("birds: ")
    assert refused(prepare_model, "-birds", BIRDS, None, 1).message == f"invalid name '-birds': {NAME_RULE}"
    error = refused(prepare_model, "birds", BIRDS, None, 1, guest=None, guest_args=("x",))
    assert error.message == "guest args are for a model's guest: name the guest too"


def test_prepare_model_takes_the_labels_from_the_metadata_or_has_none() -> None:
    manifest, labels = prepare_model("mobilenet", METADATA_MODEL, None, 1)
    assert manifest.has_labels and labels is not None and len(labels) == manifest.num_classes == 1001
    manifest, labels = prepare_model("mnist", UNLABELLED, None, 1)
    assert not manifest.has_labels and labels is None


def test_a_model_manifest_reads_back_as_written() -> None:
    manifest, _ = prepare_model(
        "birds", BIRDS, BIRDS_LABELS, 2, guest="detector", guest_args=("a", "{image_path}")
    )
    written = manifest.to_dict()
    assert written["name"] == "birds" and written["version"] == 2 and written["labels"] is True
    assert written["guest"] == "detector" and written["guest_args"] == ["a", "{image_path}"]
    assert written["encoding"] == "tensorflowlite" and written["created"] == manifest.created
    assert written["sha256"] == manifest.sha256 and written["size"] == len(BIRDS)
    assert written["inputs"] == manifest.spec.to_dict()["inputs"]
    assert ModelManifest.from_dict(written) == manifest
    plain, _ = prepare_model("mnist", UNLABELLED, None, 1)
    assert plain.to_dict()["guest"] is None and plain.to_dict()["guest_args"] is None
    assert ModelManifest.from_dict(plain.to_dict()) == plain


def test_a_model_manifest_of_an_older_version_reads_with_the_defaults() -> None:
    manifest, _ = prepare_model("birds", BIRDS, BIRDS_LABELS, 1)
    older = {
        k: v for k, v in manifest.to_dict().items() if k not in ("labels", "created", "encoding", "guest")
    }
    older.pop("guest_args")
    read = ModelManifest.from_dict({**older, "version": "1", "size": str(len(BIRDS))})
    assert read.version == 1 and read.size == len(BIRDS) and read.spec == manifest.spec
    assert not read.has_labels and read.created == 0.0 and read.encoding == "tensorflowlite"
    assert read.guest is None and read.guest_args is None
    assert ModelManifest.from_dict({**older, "guest": ""}).guest is None


def test_a_model_file_is_named_by_its_encoding_and_its_labels_may_be_absent(tmp_path: Path) -> None:
    manifest, _ = prepare_model("mnist", UNLABELLED, None, 1)
    other = ModelManifest.from_dict({**manifest.to_dict(), "encoding": "onnx"})  # no backend for it here
    assert other.model_file == "model.bin"
    stored = StoredModel(manifest, tmp_path)
    assert stored.model_path == tmp_path / "model.tflite" and stored.labels_path is None
    labelled, _ = prepare_model("birds", BIRDS, BIRDS_LABELS, 1)
    assert StoredModel(labelled, tmp_path).labels_path == tmp_path / "labels.txt"
    no_outputs = ModelManifest.from_dict({**manifest.to_dict(), "outputs": []})
    assert no_outputs.num_classes == 0
    assert ModelSpec(inputs=(), outputs=(TensorSpec("y", "uint8", (1, 3, 5)),)).outputs[0].shape == (1, 3, 5)
    assert (
        ModelManifest.from_dict(
            {**manifest.to_dict(), "outputs": [TensorSpec("y", "uint8", (1, 3, 5)).to_dict()]}
        ).num_classes
        == 15
    )


def test_prepare_guest_takes_a_valid_module_with_valid_args() -> None:
    manifest = prepare_guest("detector", GUEST, ("{image_path}",) * MAX_GUEST_ARGS, 4)
    assert (manifest.name, manifest.version, manifest.size) == ("detector", 4, len(GUEST))
    assert manifest.sha256 == hashlib.sha256(GUEST).hexdigest() and manifest.created > 0
    assert prepare_guest("detector", GUEST, None, 1).args is None
    cases = {
        (
            "detector",
            b"MZ not wasm",
            None,
        ): "detector: not a valid wasm module: it does not start with \\0asm (give a .wasm file)",
        (
            "detector",
            GUEST,
            ("x",) * (MAX_GUEST_ARGS + 1),
        ): f"detector: more than {MAX_GUEST_ARGS} guest arguments",
        ("_detector", GUEST, None): f"invalid name '_detector': {NAME_RULE}",
    }
    for (name, wasm, args), message in cases.items():
        error = refused(prepare_guest, name, wasm, args, 1)
        assert error.kind == ErrorKind.INVALID_ARGUMENT and error.message == message
    damaged = b"\0asm\x01\x00\x00\x00\xff"  # a header, then no valid section
    error = refused(prepare_guest, "detector", damaged, None, 1)
    with pytest.raises(wasmtime.WasmtimeError) as validation:
        wasmtime.Module.validate(wasmtime.Engine(), damaged)
    reason = str(validation.value).strip().splitlines()[0]  # wasmtime's own reason, its first line
    assert "malformed section id" in reason
    assert error.message == f"detector: not a valid wasm module: {reason}"
    error = refused(prepare_guest, "detector", GUEST, ("{nonsense}",), 1)
    assert error.message.startswith("unknown guest args placeholder {nonsense}")


def test_a_guest_manifest_reads_back_as_written_and_as_older_versions_wrote_it() -> None:
    manifest = prepare_guest("detector", GUEST, ("--image", "{image_path}"), 2)
    written = manifest.to_dict()
    assert written == {
        "name": "detector",
        "version": 2,
        "sha256": manifest.sha256,
        "size": len(GUEST),
        "args": ["--image", "{image_path}"],
        "created": manifest.created,
    }
    assert GuestManifest.from_dict(written) == manifest
    plain = prepare_guest("detector", GUEST, None, 1)
    assert plain.to_dict()["args"] is None and GuestManifest.from_dict(plain.to_dict()) == plain
    older = {k: v for k, v in written.items() if k not in ("args", "created")}
    read = GuestManifest.from_dict({**older, "version": "2", "size": str(len(GUEST))})
    assert read.args is None and read.created == 0.0 and read.version == 2 and read.size == len(GUEST)
