"""The `classifier` command line on a local store: models, classify, wasm run."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IMAGES, MODELS

from service.cli import EXIT_TRAP, _parser, main

BIRDS = MODELS / "aiy_birds_v1"
BIRD = IMAGES / "classify" / "bird.jpg"
CLASSIFIER = Path(sys.executable).with_name("classifier")  # the console script of this install


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def run(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def put_birds(capfd: pytest.CaptureFixture[str], store: Path) -> tuple[int, str, str]:
    return run(
        capfd,
        "--store",
        store,
        "models",
        "put",
        "birds",
        BIRDS / "model.tflite",
        "--labels",
        BIRDS / "labels.txt",
    )


def test_models_put_list_rm(capfd, store: Path) -> None:
    code, out, _ = put_birds(capfd, store)
    assert code == 0 and "stored birds version 1" in out and "965 classes, labels file" in out
    code, out, _ = put_birds(capfd, store)  # the same bytes and labels again: nothing new
    assert (code, out) == (0, "birds version 1 is already stored (same sha256 and labels)\n")
    code, out, _ = run(capfd, "--store", store, "models", "put", "birds", BIRDS / "model.tflite")
    assert code == 0 and "stored birds version 2" in out and "model metadata" in out  # other labels

    code, out, _ = run(capfd, "--store", store, "models", "list", "--json")
    [listed] = json.loads(out)
    assert listed["name"] == "birds" and listed["version"] == 2 and listed["outputs"][0]["shape"] == [1, 965]
    code, out, _ = run(capfd, "--store", store, "models", "list")
    assert out.startswith("birds\tv2\tuint8 1x224x224x3\t965 classes")

    assert run(capfd, "--store", store, "models", "rm", "birds")[0] == 0
    assert run(capfd, "--store", store, "models", "list", "--json")[1].strip() == "[]"
    code, _, err = run(capfd, "--store", store, "models", "rm", "birds")
    assert code == 1 and "birds" in err


def test_labels_come_from_model_metadata(capfd, store: Path) -> None:
    model = MODELS / "mobilenet_v1_0.25_224_quant_with_metadata" / "model.tflite"
    code, out, _ = run(capfd, "--store", store, "models", "put", "mobilenet", model)
    assert code == 0 and "1001 classes, model metadata" in out
    code, out, _ = run(capfd, "--store", store, "classify", IMAGES / "classify" / "burger.jpg",
                       "--model", "mobilenet", "--top-k", "1", "--json")  # fmt: skip
    assert code == 0
    assert json.loads(out)["predictions"][0]["label"] == "cheeseburger"


def test_classify_lines_and_json(capfd, store: Path) -> None:
    put_birds(capfd, store)
    sparrow = IMAGES / "classify" / "sparrow.png"
    code, out, _ = run(capfd, "--store", store, "classify", BIRD, sparrow, "--model", "birds", "--top-k", "2")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{BIRD}: Aix galericulata (166) 0.7")

    code, out, _ = run(
        capfd, "--store", store, "classify", BIRD, "--model", "birds", "--top-k", "3", "--json"
    )
    response = json.loads(out)
    assert set(response) == {"image", "model", "version", "predictions", "elapsed_ms"}
    assert response["model"] == "birds" and response["version"] == 1
    scores = [p["score"] for p in response["predictions"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert response["predictions"][0] == {"index": 166, "label": "Aix galericulata", "score": scores[0]}


def test_classify_errors_are_clear_and_exit_non_zero(capfd, store: Path, tmp_path: Path) -> None:
    code, out, err = run(capfd, "--store", store, "classify", BIRD, "--model", "nope")
    assert code == 1 and out == "" and "nope" in err and "not found" in err

    put_birds(capfd, store)
    missing = tmp_path / "missing.jpg"
    code, out, err = run(
        capfd, "--store", store, "classify", missing, BIRD, "--model", "birds", "--top-k", "1"
    )
    assert code == 1 and f"{missing}: cannot read" in err
    assert out.startswith(f"{BIRD}: Aix galericulata")  # the other images are still classified

    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    code, out, err = run(capfd, "--store", store, "classify", not_an_image, "--model", "birds", "--json")
    assert code == 1 and "could not be decoded" in err
    assert json.loads(out)["error"]["code"] == "invalid_argument"


def test_store_from_the_environment(capfd, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASSIFIER_STORE", str(store))
    assert (
        run(capfd, "models", "put", "birds", BIRDS / "model.tflite", "--labels", BIRDS / "labels.txt")[0] == 0
    )
    assert (store / "models").is_dir() or any(store.iterdir())
    assert json.loads(run(capfd, "models", "list", "--json")[1])[0]["name"] == "birds"


def test_wasm_run_passes_stdio_exit_code_and_dirs(capfd, test_guests, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_bytes(b"12345")
    code, out, _ = run(capfd, "wasm", "run", "--dir", f"/data:{tmp_path}", test_guests["probe"],
                       "read", "/data/data.txt")  # fmt: skip
    assert code == 0 and out == "read 5\n"
    code, out, _ = run(capfd, "wasm", "run", test_guests["probe"], "read", "/data/data.txt")
    assert code == 1 and out.startswith("read-failed")  # nothing is visible without --dir
    code, out, _ = run(capfd, "wasm", "run", "--dir", f"/data:{tmp_path}", test_guests["probe"],
                       "write", "/data/new.txt")  # fmt: skip
    assert code == 1 and not (tmp_path / "new.txt").exists()  # read-only unless :rw
    code, out, err = run(capfd, "wasm", "run", test_guests["probe"], "exit", "7")
    assert code == 7
    code, _, err = run(capfd, "wasm", "run", test_guests["probe"], "trap")
    assert code == EXIT_TRAP and "guest trapped" in err


def test_wasm_run_with_nn_preload_like_wasmedge(tmp_path: Path) -> None:
    """The default guest run by hand, the way `wasmedge --dir --nn-preload` runs a guest."""
    from service import default_guest
    from service.stores.local import LocalStore

    store = LocalStore(tmp_path / "store")
    store.put("birds", (BIRDS / "model.tflite").read_bytes(), (BIRDS / "labels.txt").read_text().splitlines())
    stored = store.get("birds")
    guest = Path(__file__).resolve().parents[1] / "wasm" / "bin" / "classify.wasm"
    result = subprocess.run(
        [CLASSIFIER, "wasm", "run", "--dir", f"/model:{stored.directory}",
         "--nn-preload", f"birds:TensorflowLite:CPU:{BIRDS / 'model.tflite'}",
         guest, *default_guest.arguments("birds", stored.manifest.spec, "labels.txt", 1)],
        input=BIRD.read_bytes(),
        capture_output=True,
        timeout=120,
        env={**os.environ, "CLASSIFIER_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [prediction] = json.loads(result.stdout)["predictions"]
    assert prediction["index"] == 166 and prediction["label"] == "Aix galericulata"


def test_wasm_run_refuses_bad_flags(capfd, test_guests) -> None:
    code, _, err = run(capfd, "wasm", "run", "--nn-preload", "m:ONNX:CPU:x.onnx", test_guests["probe"], "env")
    assert code == 1 and "encoding 'ONNX' has no backend here (tensorflowlite)" in err
    code, _, err = run(
        capfd, "wasm", "run", "--nn-preload", "m:TensorflowLite:GPU:x.tflite", test_guests["probe"]
    )
    assert code == 1 and "the tensorflowlite backend does not run on GPU" in err
    code, _, err = run(capfd, "wasm", "run", "--dir", "/nowhere/at/all", test_guests["probe"], "env")
    assert code == 1 and "is not a directory" in err


def test_a_bad_setting_is_one_line_naming_the_variable() -> None:
    """README "Settings": the example, run as shown, prints what it shows; other bad values too."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = readme.split("$ CLASSIFIER_WORKERS=abc classifier serve\n", 1)[1].split("\n", 1)[0]
    cases = {
        ("CLASSIFIER_WORKERS", "abc"): shown,
        ("CLASSIFIER_TIMEOUT_S", "-1"): "classifier: CLASSIFIER_TIMEOUT_S='-1': must be a number >= 0",
        ("APP_PORT", "99999"): "classifier: APP_PORT='99999': must be a port number (0-65535)",
        ("CLASSIFIER_MAX_MEMORY_MB", "0"): "classifier: CLASSIFIER_MAX_MEMORY_MB='0': must be at least 1",
    }
    for (variable, value), expected in cases.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_", "APP_"))}
        result = subprocess.run(
            [CLASSIFIER, "serve"], env={**env, variable: value}, capture_output=True, text=True, timeout=60
        )
        assert (result.returncode, result.stdout, result.stderr) == (1, "", expected + "\n"), variable


def test_serve_with_a_missing_guest_exits_1_with_one_line(tmp_path: Path) -> None:
    """A start-up failure that waiting cannot fix ends the process (exit 1, one line), rather
    than leaving it up and unhealthy for ever."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_", "APP_"))}
    env.update(CLASSIFIER_GUEST="/nonexistent.wasm", CLASSIFIER_STORE=str(tmp_path / "store"), APP_PORT="0")
    env.update(CLASSIFIER_METRICS_PORT="0")
    result = subprocess.run([CLASSIFIER, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "classifier: start-up failed: the guest /nonexistent.wasm: No such file or directory"
    )
    assert "Traceback" not in result.stderr


def test_store_goes_before_or_after_the_subcommand(capfd, store: Path, tmp_path: Path) -> None:
    code, out, _ = run(capfd, "models", "put", "birds", BIRDS / "model.tflite",
                       "--labels", BIRDS / "labels.txt", "--store", store)  # fmt: skip
    assert code == 0 and "stored birds version 1" in out
    assert run(capfd, "models", "list", "--store", store)[1].startswith("birds\tv1")
    assert run(capfd, "--store", store, "models", "list")[1].startswith("birds\tv1")
    # given twice, the one after the subcommand wins
    assert run(capfd, "--store", tmp_path / "other", "models", "list", "--store", store)[1].startswith(
        "birds"
    )
    assert run(capfd, "--store", store, "models", "list", "--store", tmp_path / "other")[1] == ""


def test_classify_with_a_missing_guest_file_is_one_line(capfd, store: Path) -> None:
    put_birds(capfd, store)
    result = subprocess.run(
        [CLASSIFIER, "--store", store, "classify", BIRD, "--model", "birds", "--guest", "/nonexistent.wasm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        "classifier: --guest: the guest /nonexistent.wasm: No such file or directory; "
        "give an existing .wasm file, or a stored or shipped guest's name"
    )
    assert "Traceback" not in result.stderr


def test_classify_with_a_stored_guest_by_name(capfd, store: Path, test_guests) -> None:
    put_birds(capfd, store)
    code, _, err = run(capfd, "--store", store, "classify", BIRD, "--model", "birds", "--guest", "logic")
    assert code == 1 and err == (
        "classifier: --guest: guest 'logic' is neither stored (`classifier guests put logic FILE.wasm`) "
        "nor shipped (classify, describe, mnist); a file's path ends in .wasm\n"
    )
    guest = Path(__file__).resolve().parents[1] / "wasm" / "bin" / "classify.wasm"
    assert run(capfd, "--store", store, "guests", "put", "logic", guest)[0] == 0
    code, out, _ = run(capfd, "--store", store, "classify", BIRD, "--model", "birds", "--guest", "logic",
                       "--top-k", "1", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["predictions"][0]["index"] == 166
    # the stored guest is the one that runs: a plain-text one answers {"output": ...}
    assert run(capfd, "--store", store, "guests", "put", "logic", test_guests["plain_text"])[0] == 0
    code, out, _ = run(capfd, "--store", store, "classify", BIRD, "--model", "birds", "--guest", "logic",
                       "--json")  # fmt: skip
    assert code == 0 and "output" in json.loads(out), out
    code, _, err = run(capfd, "--store", store, "classify", BIRD, "--model", "birds", "--guest", "logic",
                       "--guest-args", "{image_path}")  # fmt: skip
    assert code == 1 and "keeps its args in the store" in err and len(err.splitlines()) == 1


def test_classify_unknown_model_with_json_prints_a_json_error_per_image(capfd, store: Path) -> None:
    sparrow = IMAGES / "classify" / "sparrow.png"
    code, out, err = run(capfd, "--store", store, "classify", BIRD, sparrow, "--model", "nosuch", "--json")
    assert code == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["image"] for line in lines] == [str(BIRD), str(sparrow)]
    assert all(
        line["error"]["code"] == "not_found" and "nosuch" in line["error"]["message"] for line in lines
    )
    assert err == (
        f"classifier: model 'nosuch' not found in {store}: store it with "
        "`classifier models put nosuch MODEL.tflite`, or see `classifier models list`\n"
    )


def test_guests_put_of_the_stored_version_stores_nothing(capfd, store: Path, test_guests) -> None:
    guest = Path(__file__).resolve().parents[1] / "wasm" / "bin" / "classify.wasm"
    size = guest.stat().st_size
    assert (
        run(capfd, "--store", store, "guests", "put", "g", guest)[1]
        == f"stored guest g version 1 ({size} bytes)\n"
    )
    code, out, _ = run(capfd, "--store", store, "guests", "put", "g", guest)
    assert (code, out) == (0, "guest g version 1 is already stored (same sha256 and args)\n")
    code, out, _ = run(capfd, "--store", store, "guests", "put", "g", guest, "--args", "{model_path}")
    assert code == 0 and out.startswith("stored guest g version 2")


def test_top_k_is_not_padded_with_zero_scores(capfd, store: Path) -> None:
    """docs/guests.md "Top-k is at most k": birds gives bird.jpg a handful of non-zero classes."""
    put_birds(capfd, store)
    code, out, _ = run(
        capfd, "--store", store, "classify", BIRD, "--model", "birds", "--top-k", "965", "--json"
    )
    assert code == 0
    predictions = json.loads(out)["predictions"]
    assert 1 < len(predictions) < 965 and all(p["score"] > 0 for p in predictions), predictions
    code, out, _ = run(capfd, "--store", store, "classify", BIRD, "--model", "birds", "--top-k", "965")
    assert code == 0 and out.count(", ") == len(predictions) - 1 and " 0.000" not in out


def test_zero_padding_keeps_the_first_prediction() -> None:
    from service.pipeline import _without_zero_padding

    zero, low = {"index": 1, "score": 0.0}, {"index": 2, "score": 0.00390625}
    assert _without_zero_padding({"predictions": [low, zero, zero]}) == {"predictions": [low]}
    assert _without_zero_padding({"predictions": [zero, zero]}) == {"predictions": [zero]}
    assert _without_zero_padding({"output": "text"}) == {"output": "text"}
    assert _without_zero_padding({"predictions": [low, low]}) == {"predictions": [low, low]}


README = Path(__file__).resolve().parents[1] / "README.md"


def _command_summary() -> list[str]:
    section = README.read_text().split("## The command line\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("classifier ")]


def _leaf_commands() -> dict[str, argparse.ArgumentParser]:
    """Every runnable command, by its prog (`classifier models put`), from the parser itself."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser) -> None:
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subcommands:
            found[parser.prog] = parser
        for action in subcommands:
            for child in action.choices.values():
                walk(child)

    walk(_parser())
    return found


def test_readme_command_summary_lists_every_option_and_default() -> None:
    """The README's summary cannot drift from argparse: each command has its line, each line
    names each of its command's options (and no other), with the default where there is one."""
    lines = _command_summary()
    commands = _leaf_commands()
    assert commands, "no commands found"
    readme = README.read_text()
    for prog, parser in commands.items():
        [line] = [line for line in lines if line.startswith(prog + " ") or line == prog]
        shown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line.split("#", 1)[0]))
        options = {
            option
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--") and option != "--help"
        }
        # --store is on every command that uses the store: the text under the summary says so
        assert shown == options - {"--store"}, (prog, shown, options)
        for action in parser._actions:
            if "--top-k" in action.option_strings and action.default is not None:
                assert f"K default {action.default}" in line, (prog, line)
            if "--timeout" in action.option_strings:
                assert f"S default {action.default:g}" in line, (prog, line)
    assert len(lines) == len(commands), "a README line for a command that does not exist"
    assert "`--store DIR` goes before or after the subcommand" in readme


def test_readme_classify_json_sample_is_what_it_prints(capfd, monkeypatch, tmp_path: Path) -> None:
    section = README.read_text().split("## The command line\n", 1)[1]
    sample = section.split("```console\n", 1)[1].split("```", 1)[0].splitlines()
    command, shown = sample[0].removeprefix("$ classifier "), sample[1]
    monkeypatch.chdir(README.parent)  # the README's ../shared paths
    monkeypatch.setenv("CLASSIFIER_STORE", str(tmp_path / "store"))
    assert (
        run(capfd, "models", "put", "birds", BIRDS / "model.tflite", "--labels", BIRDS / "labels.txt")[0] == 0
    )
    code, out, _ = run(capfd, *shlex.split(command))
    assert code == 0
    printed, expected = json.loads(out), json.loads(shown)
    assert printed["elapsed_ms"] > 0
    assert {**printed, "elapsed_ms": 0} == {**expected, "elapsed_ms": 0}
    assert out.strip() == shown.replace(
        f'"elapsed_ms": {expected["elapsed_ms"]}', f'"elapsed_ms": {printed["elapsed_ms"]}'
    )


def test_a_models_guest_on_the_command_line_is_checked_and_one_line(capfd, store: Path, test_guests) -> None:
    mnist = MODELS / "mnist_lstm_uint8" / "model.tflite"
    code, _, err = run(capfd, "--store", store, "models", "put", "digits", mnist, "--guest", "nosuch")
    assert code == 1 and err == (
        "classifier: guest 'nosuch' is neither stored (`classifier guests put nosuch FILE.wasm`) "
        "nor shipped (classify, describe, mnist); a file's path ends in .wasm\n"
    )
    code, _, err = run(capfd, "--store", store, "models", "put", "digits", mnist, "--guest", "x.wasm")
    assert code == 1 and "not a file ('x.wasm')" in err and len(err.splitlines()) == 1
    code, _, err = run(
        capfd, "--store", store, "models", "put", "digits", mnist, "--guest-args", "{image_path}"
    )
    assert code == 1 and "name the guest too" in err
    assert run(capfd, "--store", store, "models", "list")[1] == ""  # nothing stored by any of them

    # a stored guest may be a model's guest, and a put of the same again stores nothing
    assert run(capfd, "--store", store, "guests", "put", "plain", test_guests["plain_text"])[0] == 0
    code, out, _ = run(capfd, "--store", store, "models", "put", "digits", mnist, "--guest", "plain")
    assert code == 0 and out.endswith(", no labels, guest plain)\n"), out
    code, out, _ = run(capfd, "--store", store, "models", "put", "digits", mnist, "--guest", "plain")
    assert out == "digits version 1 is already stored (same sha256, labels and guest)\n"
    code, out, _ = run(capfd, "--store", store, "classify", BIRD, "--model", "digits", "--json")
    assert code == 0 and "output" in json.loads(out), out  # the plain-text guest answered
    code, out, _ = run(capfd, "--store", store, "models", "set-guest", "digits", "plain")
    assert out == "digits version 1 already runs guest plain\n"
    code, _, err = run(capfd, "--store", store, "models", "set-guest", "nosuch", "mnist")
    assert code == 1 and err == f"classifier: model 'nosuch' not found in {store}\n"
    code, out, _ = run(
        capfd, "--store", store, "models", "set-guest", "digits", "mnist", "--guest-args", "{top_k}"
    )
    assert (code, out) == (0, "stored digits version 2: guest mnist (args '{top_k}')\n")
    code, out, _ = run(capfd, "--store", store, "models", "list", "--json")
    assert [(m["guest"], m["guest_args"]) for m in json.loads(out)] == [("mnist", ["{top_k}"])]
