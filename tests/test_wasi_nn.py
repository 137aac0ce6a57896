"""Conformance of the host's wasi-nn functions (module `wasi_ephemeral_nn`).

The C guest wasm/testguests/nn_conformance.c makes one wasi-nn call per named check,
on success and error paths, and prints `<check> <errno>` plus a few `<check>.<fact>
<value>` lines. It runs through the CLI with the birds model (uint8 [1,224,224,3] in,
uint8 [1,965] out) both as a file in a preopened dir and preloaded as `birds`.

Expected values follow ../shared/docs/wasm-abi.md (WasmEdge's TFLite backend; section
numbers in the comments) plus the host decisions noted "host:".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "wasm"))
from build import compile_guest  # noqa: E402

GUEST_SOURCE = ROOT / "wasm" / "testguests" / "nn_conformance.c"
MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
BIRDS = MODELS / "aiy_birds_v1" / "model.tflite"

pytestmark = pytest.mark.skipif(not BIRDS.is_file(), reason=f"{BIRDS} is missing")

INVALID_ARGUMENT, INVALID_ENCODING, NOT_FOUND = 1, 2, 8

# check name -> expected errno (or a tuple of acceptable ones).
EXPECTED: dict[str, int | tuple[int, ...]] = {
    # --- load ---
    "load_ok": 0,
    "load_again_ok": 0,  # host: the same bytes twice give a second graph
    "load_encoding_openvino": INVALID_ENCODING,  # §2.1: encoding not a dispatched backend -> 2
    "load_encoding_tensorflow": INVALID_ENCODING,  # §2.1: only TFLite is dispatched here
    "load_encoding_autodetect": INVALID_ENCODING,  # §1.4: Autodetect (5) is not dispatched
    "load_encoding_99": INVALID_ENCODING,  # §2.1
    "load_encoding_minus1": INVALID_ENCODING,  # §2.1 (0xFFFFFFFF)
    "load_target_gpu": INVALID_ARGUMENT,  # §2.2: TFLite runs on the CPU only
    "load_target_tpu": INVALID_ARGUMENT,  # §2.2
    "load_target_3": INVALID_ARGUMENT,  # §1.4, §2.1: target not in {0,1,2} -> 1
    "load_target_minus1": INVALID_ARGUMENT,  # §2.1
    "load_builders_0": INVALID_ARGUMENT,  # §2.2: exactly one graph builder
    "load_builders_2": INVALID_ARGUMENT,  # §2.2
    "load_builders_minus1": INVALID_ARGUMENT,  # §2.2 / §2.1 (0xFFFFFFFF entries)
    "load_garbage": INVALID_ARGUMENT,  # §2.2: the model cannot be imported -> 1
    "load_truncated": INVALID_ARGUMENT,  # §2.2 (the model's first 1000 bytes)
    "load_empty": INVALID_ARGUMENT,  # §2.2 (a builder of 0 bytes)
    "load_builders_oob": INVALID_ARGUMENT,  # §2.1: any out-of-bounds pointer -> 1
    "load_builders_partial_oob": INVALID_ARGUMENT,  # §2.1, §0.8: runs off the end of memory
    "load_builder_data_oob": INVALID_ARGUMENT,  # §2.1
    "load_builder_data_partial_oob": INVALID_ARGUMENT,  # §2.1, §0.8
    "load_graph_out_oob": INVALID_ARGUMENT,  # §2.1 (the graph-id slot)
    "load_graph_out_partial_oob": INVALID_ARGUMENT,  # §2.1, §0.8
    # --- load_by_name, load_by_name_with_config ---
    "load_by_name_ok": 0,  # §1.2: name_len excludes the NUL
    "load_by_name_again_ok": 0,  # §2.6: a known name is loaded once and cached
    "load_by_name_unknown": NOT_FOUND,  # §2.6: unknown name -> 8
    "load_by_name_empty": NOT_FOUND,  # §2.6
    "load_by_name_truncated": NOT_FOUND,  # §2.6: the name is name_len bytes ("bird")
    # Not in the doc: WasmEdge compares bytes (-> 8); a host may reject non-UTF-8 (-> 1).
    # Either way an errno, not a trap.
    "load_by_name_not_utf8": (INVALID_ARGUMENT, NOT_FOUND),
    "load_by_name_name_oob": INVALID_ARGUMENT,  # §2.1
    "load_by_name_graph_out_oob": INVALID_ARGUMENT,  # §2.1
    # host: the config is ignored for TFLite (WasmEdge would append it as a second
    # builder and fail with 1, §2.6), so it works like load_by_name.
    "load_by_name_with_config_ok": 0,
    "load_by_name_with_config_no_config": 0,  # host: any config, even none
    "load_by_name_with_config_unknown": NOT_FOUND,  # §2.6
    "load_by_name_with_config_name_oob": INVALID_ARGUMENT,  # §2.1
    "load_by_name_with_config_config_oob": INVALID_ARGUMENT,  # §2.1: ignored, yet a pointer
    "load_by_name_with_config_graph_out_oob": INVALID_ARGUMENT,  # §2.1
    # --- init_execution_context ---
    "init_ok": 0,
    "init_unknown_graph": INVALID_ARGUMENT,  # §2.1: unknown graph id -> 1
    "init_graph_minus1": INVALID_ARGUMENT,  # §2.1: 0xFFFFFFFF is unknown too
    "init_context_out_oob": INVALID_ARGUMENT,  # §2.1
    "init_preloaded_ok": 0,
    # --- set_input (context 0, input 0) ---
    "set_input_ok_u8": 0,  # §1.4: U8 = 3 (crate 0.6, WasmEdge >= 0.15)
    "set_input_ok_u8_old_code": 0,  # §2.7: a uint8 input also takes 2 (crate <= 0.5)
    "set_input_ok_type_low_byte": 0,  # §0.2, §1.3: only byte 8 is read (0xFFFFFF03)
    "set_input_ok_type_low_byte_old_code": 0,  # §1.3 (0xABCDEF02)
    "set_input_type_f16": INVALID_ARGUMENT,  # §2.4 check 4 / §2.7: type must match uint8
    "set_input_type_f32": INVALID_ARGUMENT,  # §2.7: f32 is for float32 inputs
    "set_input_type_i32": INVALID_ARGUMENT,  # §2.7
    "set_input_type_i64": INVALID_ARGUMENT,  # §2.1: F64/I64 are never accepted
    "set_input_type_low_byte_f32": INVALID_ARGUMENT,  # §1.3: 0x301 is f32, not u8
    "set_input_bytes_short": INVALID_ARGUMENT,  # §2.4 check 1: byte size
    "set_input_bytes_long": INVALID_ARGUMENT,  # §2.4 check 1
    "set_input_rank_3": INVALID_ARGUMENT,  # §2.4 check 2: rank
    "set_input_rank_5": INVALID_ARGUMENT,  # §2.4 check 2
    "set_input_dims_transposed": INVALID_ARGUMENT,  # §2.4 check 3: each dim (same size)
    "set_input_index_1": INVALID_ARGUMENT,  # §2.4: index >= input count -> 1
    "set_input_index_minus1": INVALID_ARGUMENT,  # §2.4: u32 0xFFFFFFFF >= input count
    "set_input_unknown_context": INVALID_ARGUMENT,  # §2.1: unknown context -> 1
    "set_input_context_minus1": INVALID_ARGUMENT,  # §2.1
    "set_input_tensor_oob": INVALID_ARGUMENT,  # §2.1 (the tensor struct)
    "set_input_tensor_partial_oob": INVALID_ARGUMENT,  # §2.1, §0.8
    "set_input_dims_oob": INVALID_ARGUMENT,  # §2.1 (dims)
    "set_input_data_oob": INVALID_ARGUMENT,  # §2.1 (data)
    "set_input_data_partial_oob": INVALID_ARGUMENT,  # §2.1, §0.8
    # --- compute, get_output ---
    "compute_ok": 0,
    "compute_unknown_context": INVALID_ARGUMENT,  # §2.1
    "compute_context_minus1": INVALID_ARGUMENT,  # §2.1
    "get_output_ok": 0,  # §2.6: copies exactly the tensor's bytes into a larger buffer
    "get_output_exact_size": 0,  # §2.6: out_max == need is enough
    "get_output_small": INVALID_ARGUMENT,  # §0.4, §2.6: too small -> 1 (released WasmEdge)
    "get_output_zero_size": INVALID_ARGUMENT,  # §2.6
    "get_output_index_1": INVALID_ARGUMENT,  # §2.6: index >= output count -> 1
    "get_output_index_minus1": INVALID_ARGUMENT,  # §2.6: u32 0xFFFFFFFF >= output count
    "get_output_unknown_context": INVALID_ARGUMENT,  # §2.1
    "get_output_context_minus1": INVALID_ARGUMENT,  # §2.1
    "get_output_out_oob": INVALID_ARGUMENT,  # §2.1 (out buffer)
    "get_output_out_partial_oob": INVALID_ARGUMENT,  # §2.1, §0.8
    "get_output_bytes_written_oob": INVALID_ARGUMENT,  # §2.1 (bytes_written slot)
    # --- a context on the preloaded graph, then finalize_execution_context ---
    "compute_before_set_input": 0,  # host: allowed (§2.6: nothing checks the order)
    "set_input_preloaded_ok": 0,
    "compute_preloaded_ok": 0,
    "get_output_preloaded_ok": 0,
    "finalize_ok": 0,  # §1.2: WasmEdge >= 0.15 extension
    "finalize_again": INVALID_ARGUMENT,  # host: a freed handle is unknown -> 1
    "finalize_unknown": INVALID_ARGUMENT,  # host / §2.1
    "finalize_minus1": INVALID_ARGUMENT,  # host / §2.1
    "set_input_finalized": INVALID_ARGUMENT,  # host: a finalized context is unknown
    "compute_finalized": INVALID_ARGUMENT,  # host
    "get_output_finalized": INVALID_ARGUMENT,  # host
    "compute_other_context_ok": 0,  # finalizing one context leaves the others alone
    # --- unload ---
    "unload_ok": 0,  # §1.2: WasmEdge >= 0.14 extension
    "unload_again": INVALID_ARGUMENT,  # host: a freed handle is unknown -> 1
    "unload_unknown": INVALID_ARGUMENT,  # host / §2.1
    "unload_minus1": INVALID_ARGUMENT,  # host / §2.1
    "init_unloaded_graph": INVALID_ARGUMENT,  # host: an unloaded graph is unknown
    "init_other_graph_ok": 0,  # unloading one graph leaves the others alone
}

# `<check>.<fact>` -> expected value, as printed. The output hash is compared with
# LiteRT's own result instead (test_output_matches_litert).
EXPECTED_FACTS: dict[str, str] = {
    "load_ok.graph": "0",  # §0.5, §2.2: graph handles start at 0 (per run)
    "load_again_ok.graph": "1",  # §2.2: the next graph id
    # §2.2: the counter goes on; the failed loads in between used no id
    "load_by_name_ok.graph": "2",
    "load_by_name_again_ok.same_graph": "1",  # §2.6: cached, the same graph id again
    "load_by_name_with_config_ok.same_graph": "1",  # host: works like load_by_name
    "init_ok.context": "0",  # §0.5: a separate counter, also from 0
    "init_preloaded_ok.context": "1",  # the failed inits in between used no id
    "get_output_ok.bytes_written": "965",  # §2.6: the tensor's size, not out_max (4096)
    "get_output_ok.top1": "608",  # the birds model's top-1 for an all-128 grey image
    "get_output_exact_size.bytes_written": "965",
    "get_output_exact_size.same_output": "1",
    "get_output_small.bytes_written_untouched": "1",  # §0.4, §2.6: not written
    "get_output_small.buffer_untouched": "1",  # §2.6: nothing copied either
    "get_output_preloaded_ok.same_output": "1",  # the preloaded model gives the same bytes
}
OUTPUT_HASH_FACT = "get_output_ok.fnv1a"


def run_guest(guest: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "service", "wasm", "run",
        "--dir", f"/models:{MODELS}",
        "--nn-preload", f"birds:TensorflowLite:CPU:{BIRDS}",
        str(guest),
        "--model-file", "/models/aiy_birds_v1/model.tflite",
        "--preloaded", "birds",
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def parse(stdout: str) -> dict[str, str]:
    results: dict[str, str] = {}
    for line in stdout.splitlines():
        if line == "done":
            continue
        name, _, value = line.partition(" ")
        assert name not in results, f"{name} printed twice"
        results[name] = value
    return results


def fnv1a(data: bytes) -> int:
    value = 2166136261
    for byte in data:
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_guest(GUEST_SOURCE, tmp_path_factory.mktemp("guest") / "nn_conformance.wasm")


@pytest.fixture(scope="module")
def first_run(guest: Path) -> subprocess.CompletedProcess[str]:
    return run_guest(guest)


@pytest.fixture(scope="module")
def results(first_run: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return parse(first_run.stdout)


def describe(run: subprocess.CompletedProcess[str]) -> str:
    return f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr[-4000:]}"


def test_guest_ran_every_check(first_run: subprocess.CompletedProcess[str]) -> None:
    """The host answered every call with an errno and the guest got to the end."""
    assert first_run.returncode == 0, describe(first_run)
    assert first_run.stdout.splitlines()[-1:] == ["done"], describe(first_run)


def test_output_lines_are_all_known(results: dict[str, str]) -> None:
    """Every line the guest printed has an expectation here, and vice versa."""
    known = set(EXPECTED) | set(EXPECTED_FACTS) | {OUTPUT_HASH_FACT}
    assert set(results) - known == set()
    assert set(EXPECTED) - set(results) == set()


@pytest.mark.parametrize(("check", "expected"), EXPECTED.items(), ids=list(EXPECTED))
def test_check(check: str, expected: int | tuple[int, ...], results: dict[str, str]) -> None:
    assert check in results, f"the guest printed no result for {check}"
    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert int(results[check]) in allowed


@pytest.mark.parametrize(("fact", "expected"), EXPECTED_FACTS.items(), ids=list(EXPECTED_FACTS))
def test_fact(fact: str, expected: str, results: dict[str, str]) -> None:
    assert fact in results, f"the guest printed no {fact} (its check failed?)"
    assert results[fact] == expected


def test_output_matches_litert(results: dict[str, str]) -> None:
    """get_output hands over LiteRT's raw output bytes for the grey image (§0.3, §2.6)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=BIRDS.read_bytes())
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(inp["index"], np.full(inp["shape"], 128, dtype=np.uint8))
    interpreter.invoke()
    expected = interpreter.get_tensor(out["index"]).tobytes()
    assert len(expected) == 965
    assert results.get(OUTPUT_HASH_FACT) == str(fnv1a(expected))


def test_run_is_repeatable(guest: Path, first_run: subprocess.CompletedProcess[str]) -> None:
    """State is per run: a second run starts from handle 0 again and prints the same."""
    second = run_guest(guest)
    assert second.returncode == 0, describe(second)
    assert second.stdout == first_run.stdout
