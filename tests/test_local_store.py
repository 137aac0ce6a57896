"""The local directory store's own guarantees, beyond the contract both stores share (tests/test_stores.py):
what a guest change keeps, names that are not names, the version directories' mode, staging on the
store's own filesystem, and entries of a model's directory it did not write."""

from __future__ import annotations

import stat
import tempfile
import time
from pathlib import Path

import pytest
from conftest import MODELS

from service.errors import ClassifierError, ErrorKind
from service.stores.local import LocalStore

BIRDS = (MODELS / "aiy_birds_v1" / "model.tflite").read_bytes()
BIRDS_LABELS = (MODELS / "aiy_birds_v1" / "labels.txt").read_text().splitlines()
GUEST = (Path(__file__).resolve().parents[1] / "wasm" / "bin" / "classify.wasm").read_bytes()
ARGS = ("{model_path}", "{image_path}")


def test_set_guest_stores_the_guest_args_and_a_new_creation_time(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = store.put("birds", BIRDS, BIRDS_LABELS)
    deadline = time.monotonic() + 10
    while time.time() <= first.created and time.monotonic() < deadline:  # the clock moves on
        time.sleep(0.001)
    before = time.time()
    changed = store.set_guest("birds", "logic", ARGS)
    assert (changed.version, changed.guest, changed.guest_args) == (2, "logic", ARGS)
    assert before <= changed.created <= time.time() and changed.created > first.created
    assert store.manifest("birds") == changed  # as stored, read back
    assert store.get("birds").manifest.guest_args == ARGS


def test_set_guest_refuses_args_without_a_guest_and_stores_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("birds", BIRDS, BIRDS_LABELS, guest="logic", guest_args=ARGS)
    with pytest.raises(ClassifierError, match="name the guest too") as exc:
        store.set_guest("birds", None, ARGS)
    assert exc.value.kind == ErrorKind.INVALID_ARGUMENT
    assert store.manifest("birds").version == 1


@pytest.mark.parametrize("name", ["./birds", "birds/", "../models/birds", "birds\n"])
def test_a_name_that_is_not_a_name_finds_nothing(tmp_path: Path, name: str) -> None:
    """`./birds` would resolve to the directory of `birds`: it is not a name, so it names no model."""
    store = LocalStore(tmp_path)
    store.put("birds", BIRDS, BIRDS_LABELS)
    store.put_guest("birds", GUEST)
    for lookup in (store.get, store.manifest, store.remove, store.get_guest, store.remove_guest):
        with pytest.raises(ClassifierError) as exc:
            lookup(name)
        assert exc.value.kind == ErrorKind.NOT_FOUND
    assert store.get("birds").manifest.version == 1 and store.get_guest("birds").manifest.version == 1


def test_version_directories_are_readable_by_every_user(tmp_path: Path) -> None:
    """The service may run as another user than the one who stored the model (the image runs as
    nobody): each version directory is rwxr-xr-x, not the 0700 of a temporary directory."""
    store = LocalStore(tmp_path)
    store.put("birds", BIRDS, BIRDS_LABELS)
    store.put_guest("logic", GUEST)
    for directory in (tmp_path / "models" / "birds" / "1", tmp_path / "guests" / "logic" / "1"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755


def test_a_store_on_another_filesystem_than_the_temp_dir_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version is staged inside the store, so the switch to it is one rename on one filesystem
    (a store on a volume, the temp dir elsewhere)."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as elsewhere:
        if Path(elsewhere).stat().st_dev == tmp_path.stat().st_dev:
            pytest.fail("/dev/shm is on the same filesystem as the test's directory: this test needs two")
        monkeypatch.setattr(tempfile, "tempdir", elsewhere)
        store = LocalStore(tmp_path)
        assert store.put("birds", BIRDS, BIRDS_LABELS).version == 1
        assert store.put_guest("logic", GUEST).version == 1
        assert list(Path(elsewhere).iterdir()) == []
    assert store.get("birds").model_path.read_bytes() == BIRDS


def test_an_entry_named_like_an_old_version_that_is_no_directory_is_left_alone(tmp_path: Path) -> None:
    """Dropping the versions before the last two removes directories; a file someone left there
    under a version's name neither fails the upload nor is removed."""
    store = LocalStore(tmp_path)
    store.put("birds", BIRDS, BIRDS_LABELS)
    stray = tmp_path / "models" / "birds" / "0"
    stray.write_text("an operator's note\n")
    second = store.put("birds", BIRDS, [label.upper() for label in BIRDS_LABELS])
    assert second.version == 2 and store.manifest("birds") == second
    assert stray.read_text() == "an operator's note\n"
    assert sorted(p.name for p in stray.parent.iterdir()) == ["0", "1", "2", "current"]
