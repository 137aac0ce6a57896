"""The `classifier` command line on a local store: models, classify, wasm run."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import IMAGES, MODELS, serving
from daprd import FakeDaprd

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


# -- bad flag values, the less used options, and failures a user can meet --------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any sidecar or classifier settings of the machine's, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_", "APP_"))}
    return {**env, **extra}


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["wasm", "run", "--timeout", "soon", "g.wasm"],
            "argument --timeout: 'soon' is not a number of seconds",
        ),
        (["serve", "--port", "http"], "argument --port: 'http' is not a port number (0-65535)"),
        (["publish", "--video", "v.mp4", "--fps", "fast"], "argument --fps: 'fast' is not a number >= 0"),
        (["results", "--idle", "0"], "argument --idle: '0' is not a number > 0"),
    ],
    ids=lambda value: " ".join(value[:2]) if isinstance(value, list) else "",
)
def test_a_bad_flag_value_is_argparse_usage_and_exit_2(capfd, argv: list[str], line: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    _, err = capfd.readouterr()
    assert exited.value.code == 2
    assert (
        err.splitlines()[-1]
        == f"classifier {' '.join(argv[:2] if argv[0] == 'wasm' else argv[:1])}: error: {line}"
    )


def test_wasm_run_env_timeout_and_bad_specs(capfd, test_guests) -> None:
    code, out, _ = run(
        capfd, "wasm", "run", "--env", "COLOUR=blue", "--env", "EMPTY=", test_guests["probe"], "env"
    )
    assert (code, out) == (0, "env COLOUR=blue\nenv EMPTY=\nenv-end\n")  # exactly what --env gives
    # a guest that spins past --timeout is stopped there: the deadline, not a hang
    code, _, err = run(capfd, "wasm", "run", "--timeout", "0.5", test_guests["probe"], "loop")
    assert (code, err) == (EXIT_TRAP, "classifier: guest trapped: deadline exceeded\n")
    for flag, spec, words in [
        ("--env", "COLOUR", "--env 'COLOUR': expected NAME=VALUE"),
        ("--env", "=blue", "--env '=blue': expected NAME=VALUE"),
        (
            "--nn-preload",
            "birds:model.tflite",
            "--nn-preload 'birds:model.tflite': expected NAME:TensorflowLite:CPU:PATH",
        ),
    ]:
        code, out, err = run(capfd, "wasm", "run", flag, spec, test_guests["probe"], "env")
        assert (code, out, err) == (1, "", f"classifier: {words}\n")


def test_guests_list_and_rm(capfd, store: Path, test_guests) -> None:
    guest = test_guests["plain_text"]
    assert run(capfd, "--store", store, "guests", "put", "plain", guest)[0] == 0
    assert (
        run(capfd, "--store", store, "guests", "put", "cmd", guest, "--args", "{model_path} '{image_path}'")[
            0
        ]
        == 0
    )
    code, out, _ = run(capfd, "--store", store, "guests", "list")
    sha = __import__("hashlib").sha256(guest.read_bytes()).hexdigest()[:12]
    size = guest.stat().st_size
    assert (code, out.splitlines()) == (
        0,
        [
            f"cmd\tv1\t{size} bytes\t{sha}\t'{{model_path}}' '{{image_path}}'",  # shlex.join quotes braces
            f"plain\tv1\t{size} bytes\t{sha}\t(default interface)",
        ],
    )
    assert run(capfd, "--store", store, "guests", "rm", "cmd") == (0, "removed guest cmd\n", "")
    assert [m["name"] for m in json.loads(run(capfd, "--store", store, "guests", "list", "--json")[1])] == [
        "plain"
    ]
    code, _, err = run(capfd, "--store", store, "guests", "rm", "cmd")
    assert code == 1 and err == f"classifier: guest 'cmd' not found in {store}\n"


def test_classify_of_a_damaged_model_is_one_line(capfd, store: Path) -> None:
    """A model file changed on disk after it was stored: not 'not found', and no image is run."""
    put_birds(capfd, store)
    [model_file] = store.glob("models/birds/1/*.tflite")
    model_file.write_bytes(model_file.read_bytes()[:-1] + b"!")
    code, out, err = run(capfd, "--store", store, "classify", BIRD, "--model", "birds")
    assert code == 1 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("classifier: model 'birds' version 1") and "sha256" in err, err


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(CLASSIFIER_STORE=str(tmp_path / "store"), CLASSIFIER_METRICS_PORT="0")
        result = subprocess.run(
            [CLASSIFIER, "serve", "--port", str(port)], env=env, capture_output=True, text=True, timeout=60
        )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines()[-1] == (
        f"classifier: cannot listen on 127.0.0.1:{port}: Address already in use: "
        "choose another port with --port or APP_PORT"
    ), result.stderr
    assert "Traceback" not in result.stderr


def test_upload_progress_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the upload's progress bar is drawn in place (\\r), and ends with its line."""
    import pty

    terminal, command_side = pty.openpty()
    guest = Path(__file__).resolve().parents[1] / "wasm" / "bin" / "classify.wasm"
    try:
        result = subprocess.run(
            [CLASSIFIER, "--store", tmp_path / "store", "guests", "put", "g", guest],
            env=clean_env(), stdout=subprocess.PIPE, stderr=command_side, text=True, timeout=60,
        )  # fmt: skip
        os.close(command_side)
        drawn = os.read(terminal, 4096).decode()
    finally:
        os.close(terminal)
    size = guest.stat().st_size
    assert result.returncode == 0 and result.stdout == f"stored guest g version 1 ({size} bytes)\n"
    kib = size >> 10
    assert drawn.replace("\r\n", "\n") == f"\ruploading g [{'#' * 30}] {kib}/{kib} KiB\n", repr(drawn)


class _NotASidecar(BaseHTTPRequestHandler):
    """What may answer at DAPR_HTTP_PORT instead of daprd: healthy for the first `healthy` probes, then
    503 (a sidecar going away); invocations of app `proxy` get a proxy's HTML 502, of app `hangup` a
    closed connection."""

    def do_GET(self) -> None:
        server: _StandIn = self.server  # type: ignore[assignment]
        with server.lock:
            healthy = server.healthy > 0
            server.healthy -= 1
        self.send_response(204 if healthy else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if "/invoke/hangup/" in self.path:
            self.close_connection = True
            return
        body = b"<html><body>502 Bad Gateway</body></html>"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _StandIn(ThreadingHTTPServer):
    healthy = 1 << 30
    lock = threading.Lock()


@pytest.fixture
def not_a_sidecar() -> Iterator[_StandIn]:
    with serving(_StandIn(("127.0.0.1", 0), _NotASidecar)) as server:
        yield server


def through(server: _StandIn, *argv: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    port = str(server.server_address[1])
    return subprocess.run(
        [CLASSIFIER, *map(str, argv)],
        env=clean_env(DAPR_HTTP_PORT=port, DAPR_GRPC_PORT=port, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_invoke_through_something_that_is_not_daprd_is_one_line_per_image(not_a_sidecar: _StandIn) -> None:
    done = through(not_a_sidecar, "invoke", BIRD, "--app-id", "proxy")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"classifier: {BIRD}: error (HTTP 502): HTTP status code: 502\n"  # not its HTML
    done = through(not_a_sidecar, "invoke", BIRD, BIRD, "--app-id", "hangup")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"classifier: {BIRD}: Server disconnected\n" * 2


def test_a_sidecar_gone_between_its_health_check_and_the_client_is_one_line(not_a_sidecar: _StandIn) -> None:
    not_a_sidecar.healthy = 1  # the command's own wait passes, the SDK's then fails
    done = through(not_a_sidecar, "invoke", BIRD, DAPR_HEALTH_TIMEOUT="1")
    port = not_a_sidecar.server_address[1]
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"classifier: the Dapr sidecar at http://127.0.0.1:{port}/v1.0 stopped answering: "
        "is it still running?\n"
    )


@pytest.fixture
def double() -> Iterator[FakeDaprd]:
    """The daprd double, with only the `statestore` and `pubsub` components (no `updates`)."""
    with FakeDaprd(state_stores={"statestore"}, pubsubs={"pubsub"}) as sidecar:
        yield sidecar


def with_double(daprd: FakeDaprd, *argv: str | Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(**{k: v for k, v in daprd.env().items() if k.startswith("DAPR_")})
    return subprocess.run([CLASSIFIER, *map(str, argv)], env=env, capture_output=True, text=True, timeout=120)


def test_publish_images_with_model_and_top_k(double: FakeDaprd) -> None:
    done = with_double(double, "publish", BIRD, "--model", "birds", "--top-k", "2")
    assert done.returncode == 0, done.stderr
    [published] = double.wait_for_published("images")
    event_id = done.stdout.removeprefix(f"published {BIRD} to pubsub/images as event ").strip()
    body = json.loads(published.data)
    assert (body["model"], body["top_k"]) == ("birds", 2) and base64.b64decode(
        body["image_base64"]
    ) == BIRD.read_bytes()
    assert published.event_id == event_id


def test_a_new_version_is_stored_though_it_cannot_be_announced(double: FakeDaprd) -> None:
    """No `updates` pub/sub: the services' polling finds the version; the upload says so and succeeds."""
    done = with_double(
        double, "models", "put", "birds", BIRDS / "model.tflite", "--labels", BIRDS / "labels.txt"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("stored birds version 1 (")
    assert done.stderr.splitlines()[1:] == [  # one line, not the gRPC error's repr
        "classifier: could not publish to model-updates: dapr_pubsub_not_found: pubsub updates is not found"
    ], done.stderr
    listed = json.loads(with_double(double, "models", "list", "--json").stdout)
    assert [(m["name"], m["version"]) for m in listed] == [("birds", 1)]


def test_classify_reads_a_pipe_and_says_why_a_path_cannot_be_read(capfd, store: Path) -> None:
    put_birds(capfd, store)
    piped = subprocess.run(
        [CLASSIFIER, "--store", store, "classify", "/dev/stdin", "--model", "birds", "--top-k", "1"],
        input=BIRD.read_bytes(), env=clean_env(), capture_output=True, timeout=120,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.decode().startswith("/dev/stdin: Aix galericulata (166) 0.7")
    code, out, err = run(capfd, "--store", store, "classify", BIRD / "x", "--model", "birds")
    assert (code, out, err) == (1, "", f"classifier: {BIRD}/x: cannot read {BIRD}/x: Not a directory\n")


def test_a_guest_args_template_is_checked_and_rendered_per_request(capfd, store: Path, test_guests) -> None:
    plain = str(test_guests["plain_text"])
    code, out, err = run(capfd, "--store", store, "classify", BIRD, "--model", "birds", "--guest", plain,
                         "--guest-args", "'{image_path}")  # fmt: skip
    assert (code, out, err) == (1, "", 'classifier: guest args "\'{image_path}": No closing quotation\n')
    mnist = MODELS / "mnist_lstm_uint8" / "model.tflite"
    assert run(capfd, "--store", store, "models", "put", "digits", mnist)[0] == 0  # no labels
    code, out, err = run(capfd, "--store", store, "classify", BIRD, "--model", "digits", "--guest", plain,
                         "--guest-args", "{labels_path}")  # fmt: skip
    assert (code, out) == (1, "")
    assert err == f"classifier: {BIRD}: the guest's args need {{labels_path}}, which this request has not\n"
