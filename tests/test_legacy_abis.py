"""Guests written for WasmEdge, unmodified: the legacy TensorFlow-Lite, TensorFlow and image
host modules, and the crates' call sequences (../shared/docs/wasm-abi.md §1, §3).

No Rust wasm target is available here, so C test guests make the calls the Rust crates
make, in their order, with the exact import types:
  wasmedge_tf_v02.c  wasmedge_tensorflow_interface 0.2 (legacy ABI, like birds_v1)
  wasmedge_tf_v03.c  wasmedge_tensorflow_interface 0.3 (the plugin ABI)
  wasi_nn_crates.c   the wasi-nn crate 0.4, 0.5 and 0.6 (witx ABI, U8 = 2 or 3)
  legacy_probe.c     the legacy ABI's error paths and traps, one case per run
Their answers are compared with LiteRT run directly on the same preprocessing.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import wasmtime
from conftest import IMAGES, MODELS, put_shared_model
from service_process import ServiceProcess, new_daprd
from tflite_models import GATHER_CONSTANTS, gather_model

from service import cli
from service.config import Settings
from service.errors import ClassifierError, ErrorKind
from service.guest_args import parse_template
from service.imaging import decode_full_rgb, decode_rgb, resize_align_corners
from service.inference.cache import GraphCache
from service.inference.litert import LITERT, Interpreter, LiteRtGraph
from service.pipeline import Classifier
from service.stores.local import LocalStore
from service.wasm.call import GuestCall, GuestLimits
from service.wasm.host import GuestResult, Preopen, WasmHost
from service.wasm.tensorflowlite import TfliteContext
from service.watcher import Watcher

BIRDS = MODELS / "aiy_birds_v1" / "model.tflite"
BIRD = IMAGES / "classify" / "bird.jpg"
BIRDS_INPUT, BIRDS_OUTPUT = "module/hub_input/images_uint8", "module/prediction"

# (model folder, input name, output name)
MOBILENET_V2_QUANT = ("mobilenet_v2_1.0_224_quant", "input", "MobilenetV2/Predictions/Softmax")
MOBILENET_V1_QUANT = (
    "mobilenet_v1_0.25_224_quant_with_metadata",
    "input",
    "MobilenetV1/Predictions/Reshape_1",
)
MOBILENET_V1_FLOAT = ("mobilenet_v1_0.25_224_float", "input", "MobilenetV1/Predictions/Reshape_1")

# In the guests: the model's folder at /model, the images at /images.
MODEL_IN_GUEST, IMAGE_DIR_IN_GUEST = "/model/model.tflite", "/images"


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph_cache() -> GraphCache:
    return GraphCache()


def run_in_host(
    host: WasmHost,
    wasm: Path,
    *args: str,
    graph_cache: GraphCache,
    model_dir: Path | None = None,
    stdin: bytes = b"",
    call: GuestCall | None = None,
    extra_preopens: tuple[Preopen, ...] = (),
) -> GuestResult:
    preopens = [Preopen(IMAGES / "classify", IMAGE_DIR_IN_GUEST), *extra_preopens]
    if model_dir is not None:
        preopens.append(Preopen(model_dir, "/model"))
    call = call or GuestCall(graph_cache=graph_cache)
    return host.run(host.load_guest_file(wasm), list(args), call=call, stdin=stdin, preopens=preopens)


def wasm_run(capfd: pytest.CaptureFixture[str], store: Path, *argv: str) -> tuple[int, str, str]:
    """`classifier wasm run ARGV...` through the CLI's main function."""
    code = cli.main(["--store", str(store), "wasm", "run", *argv])
    out, err = capfd.readouterr()
    return code, out, err


def litert_output(model: Path, pixels: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=model.read_bytes())
    interpreter.allocate_tensors()
    (tensor_in,), (tensor_out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(tensor_in["index"], pixels.reshape(tensor_in["shape"]))
    interpreter.invoke()
    return interpreter.get_tensor(tensor_out["index"]).reshape(-1)


def top1(output: np.ndarray) -> tuple[int, np.float32]:
    """The birds example's answer: first strictly largest value (from -1, 0); u8 scores / 255."""
    index = int(np.argmax(output)) if output.max() > 0 else -1
    best = output[index] if index >= 0 else output.dtype.type(0)
    if output.dtype == np.uint8:
        return index, np.float32(best) / np.float32(255)
    return index, np.float32(best)


def parse_answer(stdout: str) -> tuple[int, np.float32]:
    """`<index> : <score>`, the line birds_v1 prints."""
    index, sep, score = stdout.strip().partition(" : ")
    assert sep, f"not an answer line: {stdout!r}"
    return int(index), np.float32(score)


def as_input(pixels: np.ndarray, layout: str) -> np.ndarray:
    """What the guests feed the model for pixels in RGB order (see the guests' headers)."""
    if layout.startswith("bgr"):
        pixels = pixels[..., ::-1]
    if layout.endswith("32f"):
        unit = (pixels / 255.0).astype(np.float32)  # the legacy functions divide in double
        return unit * np.float32(2) - np.float32(1)
    return np.ascontiguousarray(pixels)


def plugin_input(pixels: np.ndarray, layout: str) -> np.ndarray:
    """The same for the image plugin's load_jpg / load_png (image.py divides in float)."""
    if layout.startswith("bgr"):
        pixels = pixels[..., ::-1]
    if layout.endswith("32f"):
        return pixels.astype(np.float32) / np.float32(255) * np.float32(2) - np.float32(1)
    return np.ascontiguousarray(pixels)


def fnv1a(data: bytes) -> int:
    value = 2166136261
    for byte in data:
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value


def lines(stdout: bytes | str) -> dict[str, str]:
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    return dict(line.partition(" ")[::2] for line in text.splitlines() if line != "done")


# -- the birds_v1 flow: WasmEdge's documented answer -----------------------------------------


def test_birds_v1_flow_prints_what_wasmedge_printed(test_guests, capfd, tmp_path):
    """wasm-learning's birds_v1 README: `166 : 0.87058824` on x86_64 (§3.2, §3.4)."""
    code, out, err = wasm_run(
        capfd,
        tmp_path,
        "--dir", f"/model:{BIRDS.parent}",
        "--dir", f"/images:{BIRD.parent}",
        str(test_guests["wasmedge_tf_v02"]), MODEL_IN_GUEST, "/images/bird.jpg",
    )  # fmt: skip
    assert (code, out) == (0, "166 : 0.87058824\n"), err


def test_legacy_resize_matches_an_independent_reading_of_boost_gil():
    """resize_align_corners against a plain per-pixel transcription of §3.4, on odd sizes."""

    def reference(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
        src_h, src_w = pixels.shape[:2]
        sx, sy = (src_w - 1) / max(width - 1, 1), (src_h - 1) / max(height - 1, 1)
        out = np.zeros((height, width, pixels.shape[2]), dtype=np.uint8)
        for y in range(height):
            for x in range(width):
                px, py = x * sx, y * sy
                x0, y0 = int(np.floor(px)), int(np.floor(py))
                fx, fy = px - x0, py - y0
                for c in range(pixels.shape[2]):
                    p = pixels[:, :, c].astype(float)
                    if x0 + 1 < src_w and y0 + 1 < src_h:
                        v = 0.0 + p[y0, x0] * ((1 - fx) * (1 - fy))
                        v += p[y0, x0 + 1] * (fx * (1 - fy))
                        v += p[y0 + 1, x0] * ((1 - fx) * fy)
                        v += p[y0 + 1, x0 + 1] * (fx * fy)
                    elif y0 + 1 < src_h:  # last column
                        v = 0.0 + p[y0, x0] * (1 - fy) + p[y0 + 1, x0] * fy
                    elif x0 + 1 < src_w:  # last row
                        v = 0.0 + p[y0, x0] * (1 - fx) + p[y0, x0 + 1] * fx
                    else:
                        v = p[y0, x0]
                    out[y, x, c] = int(v)  # truncation
        return out

    rng = np.random.default_rng(7)
    for (src_h, src_w), (height, width) in [
        ((5, 7), (3, 4)),
        ((9, 5), (4, 11)),
        ((1, 6), (3, 2)),
        ((6, 1), (1, 5)),
    ]:
        pixels = rng.integers(0, 256, (src_h, src_w, 3), dtype=np.uint8)
        assert np.array_equal(resize_align_corners(pixels, width, height), reference(pixels, width, height))
    bird = decode_full_rgb(BIRD.read_bytes())[::37, ::41]  # a real photo's values, small
    assert np.array_equal(resize_align_corners(bird, 9, 7), reference(bird, 9, 7))


def test_legacy_decode_multiplies_colour_by_alpha_like_boost_gil():
    """§3.4: GIL converts RGBA to RGB by c * a / 255 (rounded), not by dropping alpha."""
    from PIL import Image

    for name in ("transparent.png", "grey-8bit-alpha.png"):
        data = (IMAGES / "formats" / name).read_bytes()
        rgba = np.asarray(Image.open(IMAGES / "formats" / name).convert("RGBA")).astype(np.int64)
        expected = np.floor(rgba[..., :3] * rgba[..., 3:] / 255 + 0.5).astype(np.uint8)
        assert (rgba[..., 3] < 255).any()  # the test image really has transparency
        assert np.array_equal(decode_full_rgb(data), expected)


# -- crate call sequences against LiteRT -------------------------------------------------------

# (model, image, layout): every legacy image function's family and both element types
CRATE_CASES = [
    (("aiy_birds_v1", BIRDS_INPUT, BIRDS_OUTPUT), "bird.jpg", "rgb8"),
    (MOBILENET_V2_QUANT, "burger.jpg", "rgb8"),
    (MOBILENET_V1_QUANT, "sparrow.png", "bgr8"),
    (MOBILENET_V1_FLOAT, "burger-224.png", "rgb32f"),
    (MOBILENET_V1_FLOAT, "grace_hopper.jpg", "bgr32f"),
]


def crate_case_id(case: tuple) -> str:
    (model, _, _), image, layout = case
    return f"{model}-{image}-{layout}"


@pytest.mark.parametrize("case", CRATE_CASES, ids=crate_case_id)
@pytest.mark.parametrize("crate", ["0.2", "0.3"])
def test_tensorflow_interface_crate_flow_matches_litert(case, crate, host, test_guests, graph_cache):
    (model_name, input_name, output_name), image, layout = case
    model_dir = MODELS / model_name
    data = (IMAGES / "classify" / image).read_bytes()
    formats = ("PNG",) if image.endswith(".png") else ("JPEG",)
    if crate == "0.2":  # the legacy functions: full decode, GIL resize
        pixels = as_input(resize_align_corners(decode_full_rgb(data, formats=formats), 224, 224), layout)
    else:  # the image plugin's load_jpg / load_png
        pixels = plugin_input(decode_rgb(data, 224, 224, formats=formats), layout)
    expected = top1(litert_output(model_dir / "model.tflite", pixels))

    guest = test_guests["wasmedge_tf_v02" if crate == "0.2" else "wasmedge_tf_v03"]
    result = run_in_host(
        host, guest, MODEL_IN_GUEST, f"{IMAGE_DIR_IN_GUEST}/{image}", input_name, output_name, layout,
        graph_cache=graph_cache, model_dir=model_dir,
    )  # fmt: skip
    assert result.exit_code == 0, (result.trap, result.stderr, result.call.notes)
    assert parse_answer(result.stdout.decode()) == expected
    assert result.call.notes == []  # no host call failed


@pytest.mark.parametrize(
    ("crate", "tensor_type"), [("0.4", 2), ("0.5", 2), ("0.6", 3)], ids=["0.4", "0.5", "0.6"]
)
@pytest.mark.parametrize(
    ("model", "image", "element"),
    [("aiy_birds_v1", "bird.jpg", "u8"), ("mobilenet_v1_0.25_224_float", "burger.jpg", "f32")],
    ids=["birds-u8", "mobilenet-f32"],
)
def test_wasi_nn_crate_flow_matches_litert(
    crate, tensor_type, model, image, element, host, test_guests, graph_cache
):
    """§1.5: crates <= 0.5 send U8 = 2, 0.6 sends 3; the host takes both for a uint8 model."""
    data = (IMAGES / "classify" / image).read_bytes()
    layout = "rgb32f" if element == "f32" else "rgb8"
    pixels = plugin_input(decode_rgb(data, 224, 224, formats=("JPEG",)), layout)
    index, score = top1(litert_output(MODELS / model / "model.tflite", pixels))

    result = run_in_host(
        host, test_guests["wasi_nn_crates"], crate, MODEL_IN_GUEST, f"{IMAGE_DIR_IN_GUEST}/{image}", element,
        graph_cache=graph_cache, model_dir=MODELS / model,
    )  # fmt: skip
    assert result.exit_code == 0, (result.trap, result.stderr, result.call.notes)
    answer = json.loads(result.stdout)
    sent_type = 1 if element == "f32" else tensor_type
    assert (answer["tensor_type"], answer["graph"], answer["context"]) == (sent_type, 0, 0)
    assert (answer["index"], np.float32(answer["score"])) == (index, score)


@pytest.mark.parametrize("crate", ["0.5", "0.6"])
def test_wasi_nn_crate_build_from_cache_through_the_cli(crate, test_guests, capfd, tmp_path):
    """`classifier wasm run --nn-preload`, as `wasmedge --nn-preload` (load_by_name)."""
    pixels = decode_rgb(BIRD.read_bytes(), 224, 224, formats=("JPEG",))
    index, score = top1(litert_output(BIRDS, pixels))
    code, out, err = wasm_run(
        capfd,
        tmp_path,
        "--nn-preload", f"birds:TensorflowLite:CPU:{BIRDS}",
        "--dir", f"/images:{BIRD.parent}",
        str(test_guests["wasi_nn_crates"]), crate, "-", "/images/bird.jpg", "u8", "birds",
    )  # fmt: skip
    assert code == 0, err
    answer = json.loads(out)
    assert (answer["index"], np.float32(answer["score"])) == (index, score)


def test_crate_03_flow_through_the_cli(test_guests, capfd, tmp_path):
    pixels = decode_rgb((IMAGES / "classify" / "burger.jpg").read_bytes(), 224, 224, formats=("JPEG",))
    model_name, input_name, output_name = MOBILENET_V2_QUANT
    expected = top1(litert_output(MODELS / model_name / "model.tflite", pixels))
    code, out, err = wasm_run(
        capfd,
        tmp_path,
        "--dir", f"/model:{MODELS / model_name}",
        "--dir", f"/images:{IMAGES / 'classify'}",
        str(test_guests["wasmedge_tf_v03"]), MODEL_IN_GUEST, "/images/burger.jpg", input_name, output_name,
    )  # fmt: skip
    assert code == 0, err
    assert parse_answer(out) == expected


# -- exact import types ----------------------------------------------------------------------

I32, I64 = "i32", "i64"

# §3.1 (the types the birds_v1 binary imports) plus the TF functions it does not import,
# with the types of WasmEdge's fake TensorFlow module.
LEGACY_SIGNATURES: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("wasmedge_tensorflowlite", "wasmedge_tensorflowlite_create_session"): ((I32, I32), (I64,)),
    ("wasmedge_tensorflowlite", "wasmedge_tensorflowlite_append_input"): ((I64, I32, I32, I32, I32), ()),
    ("wasmedge_tensorflowlite", "wasmedge_tensorflowlite_run_session"): ((I64,), (I32,)),
    ("wasmedge_tensorflowlite", "wasmedge_tensorflowlite_get_output_tensor"): ((I64, I32, I32), (I64,)),
    ("wasmedge_tensorflowlite", "wasmedge_tensorflowlite_get_tensor_len"): ((I64,), (I32,)),
    ("wasmedge_tensorflowlite", "wasmedge_tensorflowlite_get_tensor_data"): ((I64, I32), ()),
    ("wasmedge_tensorflowlite", "wasmedge_tensorflowlite_delete_session"): ((I64,), ()),
    ("wasmedge_tensorflow", "wasmedge_tensorflow_create_session"): ((I32, I32), (I64,)),
    ("wasmedge_tensorflow", "wasmedge_tensorflow_append_input"): ((I64,) + (I32,) * 8, ()),
    ("wasmedge_tensorflow", "wasmedge_tensorflow_append_output"): ((I64, I32, I32, I32), ()),
    ("wasmedge_tensorflow", "wasmedge_tensorflow_run_session"): ((I64,), (I32,)),
    ("wasmedge_tensorflow", "wasmedge_tensorflow_get_output_tensor"): ((I64, I32, I32, I32), (I64,)),
    ("wasmedge_tensorflow", "wasmedge_tensorflow_get_tensor_len"): ((I64,), (I32,)),
    ("wasmedge_tensorflow", "wasmedge_tensorflow_get_tensor_data"): ((I64, I32), ()),
    ("wasmedge_tensorflow", "wasmedge_tensorflow_clear_input"): ((I64,), ()),
    ("wasmedge_tensorflow", "wasmedge_tensorflow_clear_output"): ((I64,), ()),
    ("wasmedge_tensorflow", "wasmedge_tensorflow_delete_session"): ((I64,), ()),
    **{
        ("wasmedge_image", f"wasmedge_image_load_{f}_to_{layout}"): ((I32,) * 5, (I32,))
        for f in ("jpg", "png")
        for layout in ("rgb8", "bgr8", "rgb32f", "bgr32f")
    },
}

# §3.6: crate 0.3's generated bindings (all i32, errno results)
PLUGIN_SIGNATURES: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    **{
        ("wasmedge_tensorflowlite", name): ((I32,) * arity, (I32,))
        for name, arity in [
            ("create_session", 3), ("delete_session", 1), ("run_session", 1), ("get_output_tensor", 4),
            ("get_tensor_len", 3), ("get_tensor_data", 5), ("append_input", 5),
        ]
    },
    **{
        ("wasmedge_tensorflow", name): ((I32,) * arity, (I32,))
        for name, arity in [
            ("create_session", 3), ("create_session_saved_model", 5), ("delete_session", 1),
            ("run_session", 1), ("get_output_tensor", 4), ("get_tensor_len", 3), ("get_tensor_data", 5),
            ("append_input", 8), ("append_output", 3), ("clear_input", 1), ("clear_output", 1),
        ]
    },
    ("wasmedge_image", "load_jpg"): ((I32,) * 7, (I32,)),
    ("wasmedge_image", "load_png"): ((I32,) * 7, (I32,)),
}  # fmt: skip


def guest_imports(wasm: Path) -> dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]]:
    module = wasmtime.Module(wasmtime.Engine(), wasm.read_bytes())
    return {
        (i.module, i.name): (tuple(map(str, i.type.params)), tuple(map(str, i.type.results)))
        for i in module.imports
        if i.module != "wasi_snapshot_preview1"
    }


@pytest.mark.parametrize(
    ("guest", "signatures"),
    [("wasmedge_tf_v02", LEGACY_SIGNATURES), ("wasmedge_tf_v03", PLUGIN_SIGNATURES)],
)
def test_test_guests_import_the_crates_exact_types(guest, signatures, test_guests):
    imports = guest_imports(test_guests[guest])
    assert set(imports) <= set(signatures)
    assert imports == {key: signatures[key] for key in imports}


def test_every_function_of_both_abis_links_with_its_exact_type(host):
    """A module importing all of them, exactly typed, links; one wrong type does not."""

    def module(signatures) -> bytes:
        imports = "".join(
            f'(import "{m}" "{n}" (func (param {" ".join(p)}) (result {" ".join(r)})))'.replace(
                "(result )", ""
            ).replace("(param )", "")
            for (m, n), (p, r) in signatures.items()
        )
        return wasmtime.wat2wasm(f'(module {imports} (memory (export "memory") 1) (func (export "_start")))')

    host.load_guest(module({**LEGACY_SIGNATURES, **PLUGIN_SIGNATURES}), "all")
    wrong = {("wasmedge_tensorflowlite", "wasmedge_tensorflowlite_create_session"): ((I32, I32), (I32,))}
    with pytest.raises(Exception, match="cannot be linked"):
        host.load_guest(module(wrong), "wrong")


# -- the legacy ABI's paths ------------------------------------------------------------------


def grey_output() -> np.ndarray:
    return litert_output(BIRDS, np.full((1, 224, 224, 3), 128, dtype=np.uint8))


def test_legacy_paths_that_do_not_trap(host, test_guests, graph_cache):
    result = run_in_host(
        host,
        test_guests["legacy_probe"],
        "paths",
        MODEL_IN_GUEST,
        graph_cache=graph_cache,
        model_dir=BIRDS.parent,
    )
    assert result.exit_code == 0, (result.trap, result.stderr)
    grey = grey_output()
    expected = {
        "create_garbage": "0",  # §3.2: a bad model -> 0
        "create_model_oob": "0",  # host: model bytes outside memory -> 0 as well
        "create_ok": "1",
        "run_ok": "0",  # §3.2: 0 = ok
        "unknown_input_ignored": "1",  # §3.2: an unknown name is silently ignored
        "short_input_ignored": "1",  # §3.2: data_len != byte size: no copy
        "long_input_ignored": "1",
        "input_taken": "1",
        "grey_top1": str(int(np.argmax(grey))),
        "grey_top1_raw": str(int(grey.max())),
        "tensor_ok": "1",
        "tensor_same_handle": "1",  # WasmEdge returns the same TfLiteTensor* each time
        "tensor_unknown_name": "0",  # §3.2: not found -> 0
        "tensor_input_name": "0",  # outputs only
        "len_ok": "965",  # §5
        "len_of_0": "0",  # §3.2: 0 for handle 0
        "data_of_0_untouched": "1",  # §3.2: nothing for handle 0
        "delete_0_ok": "1",  # §3.2: handle 0 is ignored
        "second_session_distinct": "1",
        "second_session_same_output": "1",
        "first_session_after_delete_of_second": "1",
    }
    assert lines(result.stdout) == expected
    assert result.stdout.decode().endswith("done\n")


# case: what the trap message says
TRAPS = {
    "run-unknown": "run_session: unknown session handle 999",
    "run-minus-1": "run_session: unknown session handle -1",
    "append-unknown": "append_input: unknown session handle 999",
    "output-unknown": "get_output_tensor: unknown session handle 999",
    "len-unknown": "get_tensor_len: unknown tensor handle 999",
    "data-unknown": "get_tensor_data: unknown tensor handle 999",
    "delete-unknown": "delete_session: unknown session handle 999",
    "session-as-tensor": "get_tensor_len: unknown tensor handle 1",
    "tensor-as-session": "run_session: unknown session handle 2",
    "run-after-delete": "run_session: unknown session handle 1",
    "tensor-after-delete": "get_tensor_data: unknown tensor handle 2",
    "delete-twice": "delete_session: unknown session handle 1",
    "data-oob": "get_tensor_data: tensor data (965 bytes): range 0xfffffff0+965 is outside guest memory",
    "data-partial-oob": "get_tensor_data: tensor data (965 bytes): range",
    "input-name-oob": "append_input: input name: range 0xfffffff0+8 is outside guest memory",
    "input-data-oob": "append_input: input data: range",
    "output-name-oob": "get_output_tensor: output name: range 0xfffffff0+8 is outside guest memory",
}


@pytest.mark.parametrize(("case", "message"), TRAPS.items(), ids=list(TRAPS))
def test_legacy_bad_handles_and_pointers_trap(case, message, host, test_guests, graph_cache):
    """Where WasmEdge dereferences a bad handle or writes past memory, the guest traps."""
    result = run_in_host(
        host, test_guests["legacy_probe"], "trap", case, MODEL_IN_GUEST,
        graph_cache=graph_cache, model_dir=BIRDS.parent,
    )  # fmt: skip
    assert result.stdout == b"before\n"  # the call did not return
    assert result.exit_code is None and result.trap is not None
    assert f"wasmedge_tensorflowlite_{message}" in result.trap
    if "oob" in case:
        assert "outside guest memory" in result.trap


def test_legacy_handles_are_not_shared_between_runs(host, test_guests, graph_cache, tmp_path):
    """A session handle that is live in one run means nothing in another, even meanwhile."""
    holder_call = GuestCall(graph_cache=graph_cache)
    holder: dict[str, GuestResult] = {}
    thread = threading.Thread(
        target=lambda: holder.setdefault(
            "result",
            run_in_host(
                host, test_guests["legacy_probe"], "hold", MODEL_IN_GUEST, "/sync",
                graph_cache=graph_cache, model_dir=BIRDS.parent, call=holder_call,
                extra_preopens=(Preopen(tmp_path, "/sync"),),
            ),
        )
    )  # fmt: skip
    thread.start()
    try:
        for _ in range(1000):
            if holder_call.context(TfliteContext).legacy_sessions or not thread.is_alive():
                break
            time.sleep(0.01)
        ((handle, _session),) = holder_call.context(TfliteContext).legacy_sessions.items()  # the other run's
        other = run_in_host(host, test_guests["legacy_probe"], "use", str(handle), graph_cache=graph_cache)
        assert other.trap is not None and f"unknown session handle {handle}" in other.trap
    finally:
        (tmp_path / "release").write_text("")
        thread.join(30)
    result = holder["result"]
    assert result.exit_code == 0, (result.trap, result.stderr)
    assert lines(result.stdout) == {"session": str(handle), "run": "0"}
    assert len(holder_call.context(TfliteContext).legacy_sessions) == 0  # released at the end of the run


# -- the plugin ABI's paths (crate 0.3) ------------------------------------------------------

INVALID_ARGUMENT, MISSING_MEMORY = 1, 3


def test_plugin_abi_errnos(host, test_guests, graph_cache):
    """Errnos and their order as WasmEdge's wasmedge_tensorflowlite plugin (§3.6)."""
    result = run_in_host(
        host, test_guests["wasmedge_tf_v03"], "--checks", MODEL_IN_GUEST,
        graph_cache=graph_cache, model_dir=BIRDS.parent,
    )  # fmt: skip
    assert result.exit_code == 0, (result.trap, result.stderr)
    grey = grey_output()
    expected = {
        "create_ok": "0",
        "create_ok.session": "0",  # ids from 0
        "create_second_ok": "0",
        "create_second_ok.session": "1",
        "create_garbage": str(INVALID_ARGUMENT),  # cannot import the model
        "create_model_oob": str(MISSING_MEMORY),  # the plugin's code for a bad range
        "create_model_partial_oob": str(MISSING_MEMORY),
        "create_out_oob": str(MISSING_MEMORY),
        "append_ok": "0",
        "append_unknown_session": str(INVALID_ARGUMENT),
        "append_unknown_name": str(INVALID_ARGUMENT),
        "append_name_with_nul": str(INVALID_ARGUMENT),  # exact names
        "append_short": str(INVALID_ARGUMENT),  # byte size must match
        "append_data_oob": str(MISSING_MEMORY),
        "append_name_oob": str(MISSING_MEMORY),
        "run_ok": "0",
        "run_unknown_session": str(INVALID_ARGUMENT),
        "output_ok": "0",
        "output_ok.tensor": "0",  # the output's position
        "output_unknown_name": str(INVALID_ARGUMENT),
        "output_input_name": str(INVALID_ARGUMENT),
        "output_unknown_session": str(INVALID_ARGUMENT),
        "output_name_oob": str(MISSING_MEMORY),
        "output_out_oob": str(MISSING_MEMORY),
        "len_ok": "0",
        "len_ok.bytes": "965",
        "len_unknown_tensor": str(INVALID_ARGUMENT),
        "len_unknown_session": str(INVALID_ARGUMENT),
        "len_out_oob": str(MISSING_MEMORY),
        "data_ok": "0",
        "data_ok.written": "965",  # host: the bytes written (WasmEdge leaves 0)
        "data_ok.top1": str(int(np.argmax(grey))),
        "data_ok.top1_raw": str(int(grey.max())),
        "data_small": str(INVALID_ARGUMENT),  # the plugin wants the exact size
        "data_small.written": "0",  # written as 0 before the size check, as WasmEdge
        "data_large": str(INVALID_ARGUMENT),
        "data_unknown_tensor": str(INVALID_ARGUMENT),
        "data_unknown_session": str(INVALID_ARGUMENT),
        "data_buf_oob": str(MISSING_MEMORY),
        "data_buf_partial_oob": str(MISSING_MEMORY),
        "data_written_oob": str(MISSING_MEMORY),
        "delete_ok": "0",
        "delete_again": "0",  # always success, as WasmEdge
        "delete_unknown": "0",
        "run_deleted": str(INVALID_ARGUMENT),
        "run_other_session_ok": "0",
        "create_after_delete_ok": "0",
        "create_after_delete_ok.session": "0",  # the freed id is reused, as WasmEdge
    }
    assert lines(result.stdout) == expected
    assert result.stdout.decode().endswith("done\n")


# -- wasmedge_tensorflow: linked, failing, saying why ----------------------------------------


def test_tensorflow_graph_fails_with_a_clear_line_on_stderr_legacy(test_guests, capfd, tmp_path):
    """Crate 0.2 ignores every status: the guest ends with an empty output (§3.1, §3.3)."""
    (tmp_path / "graph.pb").write_bytes(b"a frozen TensorFlow graph")
    code, out, err = wasm_run(
        capfd,
        tmp_path,
        "--dir", f"/model:{tmp_path}",
        "--dir", f"/images:{BIRD.parent}",
        str(test_guests["wasmedge_tf_v02"]), "/model/graph.pb", "/images/bird.jpg",
    )  # fmt: skip
    assert (code, out) == (0, "-1 : 0\n")
    said = err.splitlines()
    expected_outcomes = {
        "create_session": "returns 0",
        "append_input": "does nothing",
        "append_output": "does nothing",
        "run_session": "returns 1",
        "get_output_tensor": "returns 0",
        "get_tensor_len": "returns 0",
        "clear_input": "does nothing",
        "clear_output": "does nothing",
        "delete_session": "does nothing",
    }
    for name, outcome in expected_outcomes.items():
        line = f"wasmedge_tensorflow_{name}: this host runs TensorFlow Lite models only, not TensorFlow"
        assert f"{line} ({outcome})" in said
    assert len(said) == len(expected_outcomes)  # one line per function, nothing else


def test_tensorflow_graph_fails_with_an_errno_plugin(host, test_guests, graph_cache, tmp_path):
    """Crate 0.3 unwraps: create_session's errno 1 panics the guest."""
    (tmp_path / "graph.pb").write_bytes(b"a frozen TensorFlow graph")
    result = run_in_host(
        host, test_guests["wasmedge_tf_v03"], "/model/graph.pb", "/images/bird.jpg",
        graph_cache=graph_cache, model_dir=tmp_path,
    )  # fmt: skip
    assert result.trap is not None and result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        "wasmedge_tensorflow create_session: this host runs TensorFlow Lite models only, not TensorFlow "
        "(returns errno 1)",
        "thread 'main' panicked at create_session: called `Result::unwrap()` on an `Err` value: "
        "INVALID_ARGUMENT (error 1)",
    ]


# -- the legacy image functions ----------------------------------------------------------------


def legacy_pixels(image: Path, function: str, width: int, height: int) -> bytes:
    formats = ("PNG",) if function.startswith("png") else ("JPEG",)
    pixels = resize_align_corners(decode_full_rgb(image.read_bytes(), formats=formats), width, height)
    layout = function.split("_to_")[1]
    if layout.startswith("bgr"):
        pixels = pixels[..., ::-1]
    if layout.endswith("32f"):
        return (pixels / 255.0).astype("<f4").tobytes()
    return np.ascontiguousarray(pixels).tobytes()


IMAGE_CASES = [
    ("jpg_to_rgb8", IMAGES / "classify" / "bird.jpg", 224, 224),
    ("jpg_to_bgr8", IMAGES / "classify" / "grace_hopper.jpg", 100, 60),
    ("jpg_to_rgb32f", IMAGES / "odd" / "hopper_orientation_6.jpg", 31, 47),  # EXIF-rotated
    ("jpg_to_bgr32f", IMAGES / "odd" / "hopper_gray.jpg", 64, 64),  # grey: replicated
    ("png_to_rgb8", IMAGES / "classify" / "sparrow.png", 224, 224),
    ("png_to_bgr8", IMAGES / "formats" / "transparent.png", 50, 40),  # alpha
    ("png_to_rgb32f", IMAGES / "formats" / "Flag_of_the_Netherlands-16bit.png", 30, 20),
    ("png_to_bgr32f", IMAGES / "classify" / "burger-224.png", 300, 300),  # upscaled
]


@pytest.mark.parametrize(
    ("function", "image", "width", "height"), IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES]
)
def test_legacy_image_functions_write_wasmedges_layout(function, image, width, height, host, test_guests):
    result = run_in_host(
        host, test_guests["legacy_probe"], "image", function, str(width), str(height),
        graph_cache=GraphCache(), stdin=image.read_bytes(),
    )  # fmt: skip
    expected = legacy_pixels(image, function, width, height)
    assert lines(result.stdout) == {"status": "0", "fnv1a": str(fnv1a(expected))}


@pytest.mark.parametrize(
    ("function", "image", "variant", "note"),
    [
        ("png_to_rgb8", BIRD, "", "not a recognised image format"),  # a JPEG to a png function
        ("jpg_to_rgb8", IMAGES / "classify" / "sparrow.png", "", "not a recognised image format"),
        ("jpg_to_rgb8", IMAGES / "odd" / "corrupt-header.jpg", "", ""),
        ("jpg_to_rgb8", IMAGES / "odd" / "large" / "giant-image.jpg", "", "over the limit of"),
        ("jpg_to_rgb8", BIRD, "bad-in", "outside guest memory"),
        ("jpg_to_rgb32f", BIRD, "bad-out", "outside guest memory"),
    ],
    ids=["jpg-as-png", "png-as-jpg", "corrupt", "decompression-bomb", "input-oob", "output-oob"],
)
def test_legacy_image_functions_fail_with_1(function, image, variant, note, host, test_guests):
    result = run_in_host(
        host, test_guests["legacy_probe"], "image", function, "224", "224", variant,
        graph_cache=GraphCache(), stdin=image.read_bytes(),
    )  # fmt: skip
    assert lines(result.stdout)["status"] == "1"
    assert lines(result.stdout)["fnv1a"] == str(fnv1a(bytes(224 * 224 * 3 * (4 if "32f" in function else 1))))
    assert len(result.call.notes) == 1 and note in result.call.notes[0]


def test_legacy_image_output_running_off_memory_writes_nothing(host, test_guests):
    """No output length (§3.4): the whole range is checked first, then all or nothing."""
    result = run_in_host(
        host, test_guests["legacy_probe"], "image", "jpg_to_rgb8", "32", "32", "tail-out",
        graph_cache=GraphCache(), stdin=BIRD.read_bytes(),
    )  # fmt: skip
    assert lines(result.stdout) == {"status": "1", "untouched": "1"}


def test_graph_loaded_by_sessions_is_the_shared_cache(host, test_guests, graph_cache):
    """create_session reuses the graph (and its interpreter pool) the cache holds."""
    run_in_host(
        host, test_guests["wasmedge_tf_v02"], MODEL_IN_GUEST, "/images/bird.jpg",
        graph_cache=graph_cache, model_dir=BIRDS.parent,
    )  # fmt: skip
    cached = graph_cache.get_or_load(LITERT, [BIRDS.read_bytes()])
    assert isinstance(cached, LiteRtGraph) and cached.idle_count() >= 1  # the session's interpreter came back


# -- a WasmEdge guest as the business logic of classify -------------------------------------

BIRDS_MODEL = "aiy_birds_v1"  # its name in the model_store fixture


@pytest.fixture(scope="module")
def wasmedge_classifier(model_store, test_guests):
    """The service with the birds_v1-style guest, args as WasmEdge users pass them."""
    settings = Settings(
        store_dir=model_store.root,
        guest=test_guests["wasmedge_tf_v02"],
        guest_args=parse_template("{model_path} {image_path}"),
    )
    instance = Classifier(settings, store=model_store)
    yield instance
    instance.close()


def classifier_with(model_store, wasm: Path, template: str) -> Classifier:
    settings = Settings(store_dir=model_store.root, guest=wasm, guest_args=parse_template(template))
    return Classifier(settings, store=model_store)


def test_wasmedge_guest_answers_classify_with_its_stdout(wasmedge_classifier, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the request's image goes
    response = wasmedge_classifier.classify(BIRD.read_bytes(), BIRDS_MODEL)
    assert response.pop("elapsed_ms") > 0
    assert response == {"model": BIRDS_MODEL, "version": 1, "output": "166 : 0.87058824"}
    assert list(tmp_path.iterdir()) == []  # the image's directory is gone with the request


def test_json_stdout_is_the_response_as_it_is(model_store, test_guests):
    pixels = decode_rgb(BIRD.read_bytes(), 224, 224, formats=("JPEG",))
    index, score = top1(litert_output(BIRDS, pixels))
    classifier = classifier_with(model_store, test_guests["wasi_nn_crates"], "0.6 {model_path} {image_path}")
    try:
        response = classifier.classify(BIRD.read_bytes(), BIRDS_MODEL)
    finally:
        classifier.close()
    assert response["model"] == BIRDS_MODEL and response["version"] == 1 and "elapsed_ms" in response
    assert (response["crate"], response["index"], np.float32(response["score"])) == ("0.6", index, score)


def test_what_a_command_guest_is_given(model_store, test_guests):
    """Args from the template; the image in a read-only /input and on stdin; the model in /model."""
    probe = test_guests["probe"]
    image = (IMAGES / "classify" / "sparrow.png").read_bytes()

    def output(template: str) -> list[str]:
        """The guest's stdout, also when it exits non-zero (the request fails then)."""
        classifier = classifier_with(model_store, probe, template)
        results: list[GuestResult] = []
        real_run = classifier.host.run
        classifier.host.run = lambda *a, **k: results.append(real_run(*a, **k)) or results[-1]
        try:
            classifier.classify(image, BIRDS_MODEL, top_k=3)
        except ClassifierError:
            assert results[-1].exit_code == 1  # the probe's "it failed"
        finally:
            classifier.close()
        return results[-1].stdout.decode().splitlines()

    assert output("args {model_path} {labels_path} {model_name} {top_k} {image_path}") == [
        "arg classify",  # the guest's name
        "arg args",
        "arg /model/model.tflite",
        "arg /model/labels.txt",
        f"arg {BIRDS_MODEL}",
        "arg 3",
        "arg /input/image.png",  # named by the image's type
    ]
    assert sorted(output("ls /input {image_path}")) == ["entry .", "entry ..", "entry image.png"]
    assert output("write /input/new.txt {image_path}")[0].startswith("write-failed")  # read-only
    stdin_hash = 0
    for byte in image:
        stdin_hash = (stdin_hash * 31 + byte) % 1000000007
    assert output("stdin") == [f"bytes {len(image)} hash {stdin_hash}"]
    assert output("ls /input")[0].startswith("ls-failed")  # no {image_path}: no file, no directory


def test_a_guest_that_traps_fails_the_request_clearly(model_store, test_guests):
    classifier = classifier_with(model_store, test_guests["legacy_probe"], "trap run-unknown {model_path}")
    try:
        with pytest.raises(ClassifierError) as failure:
            classifier.classify(BIRD.read_bytes(), BIRDS_MODEL)
    finally:
        classifier.close()
    assert failure.value.kind == ErrorKind.GUEST_FAILED
    assert "wasmedge_tensorflowlite_run_session: unknown session handle 999" in failure.value.message


def test_guest_args_need_a_guest_file_and_known_placeholders(model_store):
    with pytest.raises(ClassifierError, match=re.escape("unknown guest args placeholder {model}")):
        parse_template("{model} {image_path}")
    with pytest.raises(ClassifierError, match=re.escape("CLASSIFIER_GUEST=FILE.wasm")):
        Classifier(Settings(store_dir=model_store.root, guest_args=("{model_path}",)), store=model_store)


def test_classify_cli_with_a_wasmedge_guest(model_store, test_guests, capfd):
    code = cli.main(
        [
            "--store", str(model_store.root), "classify", str(BIRD), "--model", BIRDS_MODEL, "--json",
            "--guest", str(test_guests["wasmedge_tf_v02"]), "--guest-args", "{model_path} {image_path}",
        ]
    )  # fmt: skip
    out, err = capfd.readouterr()
    assert code == 0, err
    response = json.loads(out)
    assert (response["image"], response["output"]) == (str(BIRD), "166 : 0.87058824")


def test_classifier_serve_runs_a_stored_wasmedge_guest(test_guests, tmp_path, monkeypatch, capfd):
    """End to end: `classifier guests put --args` into the Dapr state store, `classifier serve`
    with CLASSIFIER_GUEST naming it, classify invoked through the daprd double."""
    daprd = new_daprd()
    service = None
    try:
        for name, value in daprd.env().items():
            if name.startswith("DAPR_"):
                monkeypatch.setenv(name, value)
        store = str(tmp_path / "uploader")
        guest = str(test_guests["wasmedge_tf_v02"])
        uploads = [
            ["models", "put", "birds", str(BIRDS), "--labels", str(BIRDS.parent / "labels.txt")],
            ["guests", "put", "birds-v1", guest, "--args", "{model_path} {image_path}"],
        ]
        for argv in uploads:
            assert cli.main(["--store", store, *argv]) == 0, capfd.readouterr().err
        service = ServiceProcess(
            daprd, tmp_path, CLASSIFIER_GUEST="birds-v1", CLASSIFIER_DEFAULT_MODEL="birds"
        )
        service.wait_ready()

        result = daprd.invoke("classify", BIRD.read_bytes(), content_type="application/octet-stream")
        assert result.code == grpc.StatusCode.OK, result.details
        response = json.loads(result.data)
        assert response.pop("elapsed_ms") > 0
        assert response == {"model": "birds", "version": 1, "output": "166 : 0.87058824"}
        guest = json.loads(daprd.invoke("models", b"").data)["guest"]
        assert (guest["name"], guest["args"], guest["error"]) == (
            "birds-v1",
            ["{model_path}", "{image_path}"],
            None,
        )
    finally:
        if service is not None:
            assert service.terminate() == 0, service.log()[-3000:]
        daprd.close()


def test_a_new_guest_version_with_new_args_is_activated(test_guests, tmp_path):
    """The watcher swaps guest and args together, also when only the args change."""
    store = LocalStore(tmp_path)
    put_shared_model(store, BIRDS_MODEL)
    classifier = Classifier(Settings(store_dir=tmp_path), store=store)
    watcher = Watcher(classifier, "wasmedge", poll_s=3600)
    try:
        wasm = test_guests["wasmedge_tf_v02"].read_bytes()
        store.put_guest("wasmedge", wasm, ("{model_path}", "{image_path}"))
        assert watcher.refresh_guest()
        assert classifier.classify(BIRD.read_bytes(), BIRDS_MODEL)["output"] == "166 : 0.87058824"
        store.put_guest("wasmedge", wasm, ("{model_path}", "{image_path}", "nope", BIRDS_OUTPUT))
        assert watcher.refresh_guest()
        # An unknown input name: append_input ignores it, the model runs on zeros.
        assert classifier.classify(BIRD.read_bytes(), BIRDS_MODEL)["output"] != "166 : 0.87058824"
        assert not watcher.refresh_guest()  # nothing new
    finally:
        classifier.close()


def test_guest_and_args_from_the_environment(monkeypatch, test_guests):
    """What `classifier serve` reads: CLASSIFIER_GUEST=FILE.wasm and CLASSIFIER_GUEST_ARGS."""
    monkeypatch.setenv("CLASSIFIER_GUEST", str(test_guests["wasmedge_tf_v02"]))
    monkeypatch.setenv("CLASSIFIER_GUEST_ARGS", "{model_path} '{image_path}' 'two words'")
    settings = Settings.from_env()
    assert settings.guest == test_guests["wasmedge_tf_v02"]
    assert settings.guest_args == ("{model_path}", "{image_path}", "two words")
    monkeypatch.setenv("CLASSIFIER_GUEST_ARGS", "{model_path} {image}")
    with pytest.raises(ClassifierError, match=re.escape("placeholder {image}")):
        Settings.from_env()


# -- an invoke that fails, and the per-run session limits, through each NN ABI ---------------


@pytest.fixture(scope="module")
def gather_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("gather")
    (directory / "model.tflite").write_bytes(gather_model())
    return directory


def run_gather(host, test_guests, gather_dir, abi: str, index: int, sessions: int = 1, call=None):
    return run_in_host(
        host, test_guests["gather_probe"], abi, MODEL_IN_GUEST, str(index), str(sessions),
        graph_cache=call.graph_cache if call else GraphCache(), model_dir=gather_dir, call=call,
    )  # fmt: skip


@pytest.mark.parametrize("abi", ["nn", "legacy", "plugin"])
def test_a_failing_invoke_is_the_abis_failure_and_the_guest_goes_on(abi, host, test_guests, gather_dir):
    """TfLiteInterpreterInvoke failing: wasi-nn compute and the plugin's run_session -> 4 busy
    (wasm-abi.md §2.5), the legacy run_session -> 1; an errno, never a trap."""
    ok = run_gather(host, test_guests, gather_dir, abi, 2)
    assert ok.exit_code == 0, (ok.trap, ok.stderr)
    assert lines(ok.stdout)["run"] == "0" and lines(ok.stdout)["value"] == str(GATHER_CONSTANTS[2])
    failed = run_gather(host, test_guests, gather_dir, abi, 9)
    assert failed.exit_code == 0 and failed.trap is None, (failed.trap, failed.stderr)
    assert lines(failed.stdout)["run"] == ("1" if abi == "legacy" else "4")
    assert "value" not in lines(failed.stdout) and failed.stdout.decode().endswith("done\n")
    (note,) = [n for n in failed.call.notes if "run_session" in n or "compute" in n]
    assert "invoke: gather index out of bounds" in note


@pytest.mark.parametrize("abi", ["nn", "legacy", "plugin"])
def test_sessions_past_the_per_run_limit_are_refused(abi, host, test_guests, gather_dir):
    call = GuestCall(limits=GuestLimits(max_contexts=2), graph_cache=GraphCache())
    result = run_gather(host, test_guests, gather_dir, abi, 1, sessions=3, call=call)
    assert result.exit_code == 0, (result.trap, result.stderr)
    refused = "0" if abi == "legacy" else "4"  # legacy: no handle; else busy
    opened = "1" if abi == "legacy" else "0"
    got = [line for line in result.stdout.decode().splitlines() if line.startswith("open ")]
    assert got == [f"open 0 {opened}", f"open 1 {opened}", f"open 2 {refused}"]
    assert lines(result.stdout)["run"] == "0"  # the first session still runs
    what = "execution contexts" if abi == "nn" else "sessions"
    assert any(f"more than 2 {what}" in note for note in result.call.notes), result.call.notes


@pytest.mark.parametrize("abi", ["legacy", "plugin"])
def test_models_from_bytes_past_the_per_run_limit_are_refused(abi, host, test_guests, gather_dir):
    call = GuestCall(limits=GuestLimits(max_loaded_graphs=1), graph_cache=GraphCache())
    result = run_gather(host, test_guests, gather_dir, abi, 1, sessions=2, call=call)
    assert result.exit_code == 0, (result.trap, result.stderr)
    got = [line for line in result.stdout.decode().splitlines() if line.startswith("open ")]
    assert got == (["open 0 1", "open 1 0"] if abi == "legacy" else ["open 0 0", "open 1 4"])
    assert any("too many models loaded from bytes in one run" in note for note in result.call.notes)


def test_a_tensorflow_function_called_again_is_said_once_and_holds_no_session(host, test_guests, gather_dir):
    result = run_gather(host, test_guests, gather_dir, "tf-legacy", 2)
    assert result.exit_code == 0, (result.trap, result.stderr)
    assert result.stdout.decode().splitlines()[:3] == ["tf_session 0", "tf_session 0", "open 0 1"]
    assert lines(result.stdout)["run"] == "0"
    assert result.stderr.decode().splitlines() == [
        "wasmedge_tensorflow_create_session: this host runs TensorFlow Lite models only, not TensorFlow "
        "(returns 0)"
    ]
