"""Property-based tests (hypothesis) of what parses untrusted bytes.

- The request decoders (service/edge/requests.py): any body, content type and query string
  gives a ClassifyRequest or an invalid_argument error, never another exception; valid
  requests in every form decode to what was sent.
- The host functions reading guest memory (wasi-nn's tensor struct, dimension array, graph
  builders and output buffer; wasmedge_image; WASI poll_oneoff): driven through a real
  wasm module's memory with arbitrary pointers, lengths and struct contents. Each call
  returns the errno an independent statement of the rules predicts, never traps, and
  writes guest memory only where it succeeded in writing.
- Image decoding: damaged images fail with ImageError only.
"""

from __future__ import annotations

import base64
import json
import random
import re
import struct
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import wasmtime
from conftest import IMAGES, MODELS
from hardening import HardeningLog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.edge.classifier_pb2 import ClassifyRequest as ClassifyRequestProto
from service.edge.requests import JSON_FIELDS, ClassifyRequest, ImageFetcher, decode_body
from service.errors import ClassifierError, ErrorKind
from service.imaging import ImageError, decode_rgb
from service.inference.backend import Graph, load_graph
from service.stores.base import check_name
from service.wasm.call import GuestCall, GuestLimits, running
from service.wasm.host import WasmHost

U32 = st.integers(0, 2**32 - 1)
# Failing examples are kept in hypothesis's example database (.hypothesis/examples, its default), so a
# failure found once is tried first on every later run; print_blob prints how to replay it elsewhere. Bugs
# these properties found are also pinned as explicit @example cases, so they run whatever the database holds.
PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)


def decodes_or_refuses(body: bytes, content_type: str, query: str) -> ClassifyRequest | None:
    try:
        return decode_body(body, content_type, query, ImageFetcher())
    except ClassifierError as error:
        assert error.kind == ErrorKind.INVALID_ARGUMENT and error.message
        return None


# -- request decoders ----------------------------------------------------------------------------

CONTENT_TYPES = st.sampled_from(
    ["", "application/json", "application/octet-stream", "application/x-protobuf", "image/jpeg", "text/plain"]
) | st.text(max_size=40)
NAME_RE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # what a model name must be, entirely
VALID_NAMES = st.from_regex(NAME_RE, fullmatch=True)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def test_any_body_decodes_or_is_refused_as_invalid(hardening: HardeningLog) -> None:
    @PROPERTY_SETTINGS
    @given(
        body=st.binary(max_size=300) | st.builds(lambda b: b"{" + b, st.binary(max_size=100)),
        content_type=CONTENT_TYPES,
        query=st.text(max_size=60)
        | st.builds(lambda m, k: f"model={m}&top_k={k}", st.text(max_size=10), st.text(max_size=6)),
    )
    def check(body: bytes, content_type: str, query: str) -> None:
        decodes_or_refuses(body, content_type, query)

    check()
    hardening.record(
        "properties",
        "decode_body: any input",
        "200 random bodies (bytes, `{`-prefixed bytes), content types and query strings",
        "held",
        "a ClassifyRequest or invalid_argument, never another exception",
    )


def test_json_requests_decode_to_what_was_sent(hardening: HardeningLog) -> None:
    @PROPERTY_SETTINGS
    @given(
        image=st.binary(min_size=1, max_size=200),
        model=st.none() | VALID_NAMES | JSON_VALUES,
        top_k=st.none() | st.integers(-(2**70), 2**70) | JSON_VALUES,
        extra=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3),
        data_url=st.booleans(),
    )
    def check(image: bytes, model: object, top_k: object, extra: dict, data_url: bool) -> None:
        encoded = base64.b64encode(image).decode()
        body = {k: v for k, v in extra.items() if k not in (*JSON_FIELDS, "body")}  # "body": a gateway event
        body["image_base64"] = f"data:image/png;base64,{encoded}" if data_url else encoded
        if model is not None:
            body["model"] = model
        if top_k is not None:
            body["top_k"] = top_k
        request = decodes_or_refuses(json.dumps(body).encode(), "application/json", "")
        model_ok = model is None or model == "" or (isinstance(model, str) and re.fullmatch(NAME_RE, model))
        top_k_ok = top_k in (None, "") or (isinstance(top_k, int) and not isinstance(top_k, bool))
        assert (request is not None) == bool(model_ok and top_k_ok), (model, top_k)
        if request is not None:  # "" is no value
            assert request.image == image and request.model == (model or None)
            assert request.top_k == (None if top_k == "" else top_k)

    check()
    hardening.record(
        "properties",
        "decode_body: JSON",
        "200 JSON bodies: random image bytes (plain or data URL), model and top_k of any JSON type",
        "held",
        "exactly what was sent iff model is a valid name and top_k an integer; else invalid_argument",
    )


def test_protobuf_requests_decode_to_what_was_sent(hardening: HardeningLog) -> None:
    @PROPERTY_SETTINGS
    @given(image=st.binary(max_size=200), model=st.just("") | VALID_NAMES, top_k=st.integers(0, 2**32 - 1))
    def check(image: bytes, model: str, top_k: int) -> None:
        body = ClassifyRequestProto(image=image, model=model, top_k=top_k).SerializeToString()
        request = decode_body(body, "application/x-protobuf")
        assert (request.image, request.model, request.top_k) == (image, model or None, top_k or None)
        assert request.protobuf

    @PROPERTY_SETTINGS
    @given(body=st.binary(max_size=300))
    def check_garbage(body: bytes) -> None:
        decodes_or_refuses(body, "application/x-protobuf", "")

    check()
    check_garbage()
    hardening.record(
        "properties",
        "decode_body: protobuf",
        "200 valid ClassifyRequest messages, 200 random byte strings as application/x-protobuf",
        "held",
        "valid ones decode to what was sent; the rest decode or give invalid_argument",
    )


def test_names_are_accepted_only_when_they_match_entirely(hardening: HardeningLog) -> None:
    @PROPERTY_SETTINGS
    @given(
        name=st.text(max_size=70)
        | st.builds(lambda n, s: n + s, VALID_NAMES, st.sampled_from(["\n", "/", "\0"]))
    )
    @example(name="birds\n")  # found by this property: `$` in the old pattern matched before a final newline
    @example(name="a" * 65)  # one past the longest name
    @example(name="a" * 64)  # the longest name
    def check(name: str) -> None:
        try:
            accepted = check_name(name) == name
        except ClassifierError:
            accepted = False
        assert accepted == bool(re.fullmatch(NAME_RE, name)), repr(name)

    check()
    hardening.record(
        "properties",
        "model and guest names",
        "200 random names, and valid names followed by a newline, / or NUL",
        "held",
        "accepted iff the whole name is 1-64 of [A-Za-z0-9._-], not starting with . _ -",
    )


def test_deeply_nested_json_is_invalid_not_an_internal_error(hardening: HardeningLog) -> None:
    depth = 100_000
    body = b'{"image_base64": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(ClassifierError) as error:
        decode_body(body, "application/json")
    assert error.value.kind == ErrorKind.INVALID_ARGUMENT
    hardening.record(
        "properties",
        "decode_body: nesting",
        f"a JSON body nested {depth} arrays deep",
        "refused",
        f"{error.value.kind.value}: {error.value.message}",
    )


# -- host functions through guest memory ------------------------------------------------------------

PAGES = 4
MEMORY_SIZE = PAGES * 65536
MEMORY_PROBE = f"""
(module
  (import "wasi_ephemeral_nn" "load" (func $load (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "load_by_name" (func $load_by_name (param i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "init_execution_context" (func $init (param i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "set_input" (func $set_input (param i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "get_output" (func $get_output (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasmedge_image" "load_image"
    (func $load_image (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") {PAGES} {PAGES})
  (func (export "load") (param i32 i32 i32 i32 i32) (result i32)
    (call $load (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "load_by_name") (param i32 i32 i32) (result i32)
    (call $load_by_name (local.get 0) (local.get 1) (local.get 2)))
  (func (export "init_execution_context") (param i32 i32) (result i32)
    (call $init (local.get 0) (local.get 1)))
  (func (export "set_input") (param i32 i32 i32) (result i32)
    (call $set_input (local.get 0) (local.get 1) (local.get 2)))
  (func (export "get_output") (param i32 i32 i32 i32 i32) (result i32)
    (call $get_output (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "load_image") (param i32 i32 i32 i32 i32 i32 i32) (result i32)
    (call $load_image (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4) (local.get 5)
      (local.get 6)))
  (func (export "poll_oneoff") (param i32 i32 i32 i32) (result i32)
    (call $poll (local.get 0) (local.get 1) (local.get 2) (local.get 3))))
"""

BIRDS_INPUT = (1, 224, 224, 3)
BIRDS_INPUT_BYTES = 224 * 224 * 3
BIRDS_OUTPUT_BYTES = 965
U8_TYPE_CODES = {2, 3}
INVALID_ARGUMENT, BUSY = 1, 4


class Probe:
    """A wasm instance whose exports call the host functions; its memory is ours to fill."""

    def __init__(self, host: WasmHost, graph: Graph) -> None:
        self.store = wasmtime.Store(host.engine)
        self.store.set_epoch_deadline(1 << 40)
        module = wasmtime.Module(host.engine, wasmtime.wat2wasm(MEMORY_PROBE))
        self.instance = host.linker.instantiate(self.store, module)
        self.exports = self.instance.exports(self.store)
        self.memory: wasmtime.Memory = self.exports["memory"]
        self.graph = graph

    def fill(self, data: bytes = b"") -> None:
        """Zero the memory, then put `data` at 0."""
        self.view()[:] = 0
        self.view()[: len(data)] = np.frombuffer(data, dtype=np.uint8)

    def view(self) -> np.ndarray:
        return np.frombuffer(self.memory.get_buffer_ptr(self.store), dtype=np.uint8)[:MEMORY_SIZE]

    def write(self, at: int, data: bytes) -> None:
        """Write what fits in memory (pointers under test may run past its end)."""
        room = max(0, min(len(data), MEMORY_SIZE - at))
        if at < MEMORY_SIZE and room:
            self.view()[at : at + room] = np.frombuffer(data[:room], dtype=np.uint8)

    def u32(self, at: int) -> int:
        return int.from_bytes(self.view()[at : at + 4].tobytes(), "little")

    def call(self, name: str, *args: int) -> int:
        self.store.set_epoch_deadline(1 << 40)  # a host function past its deadline may have set it to now
        return self.exports[name](self.store, *(a - 2**32 if a >= 2**31 else a for a in args))

    def open_context(self) -> int:
        """load_by_name("birds") and init_execution_context; the context handle (0)."""
        self.write(16, b"birds")
        assert self.call("load_by_name", 16, 5, 64) == 0
        assert self.call("init_execution_context", self.u32(64), 72) == 0
        return self.u32(72)


@pytest.fixture(scope="module")
def birds_graph() -> Graph:
    return load_graph((MODELS / "aiy_birds_v1" / "model.tflite").read_bytes())


@pytest.fixture(scope="module")
def probe(host: WasmHost, birds_graph: Graph) -> Probe:
    return Probe(host, birds_graph)


@pytest.fixture
def new_call(birds_graph: Graph) -> Iterator[Callable[..., GuestCall]]:
    def make(timeout_s: float = 10.0) -> GuestCall:
        return GuestCall(limits=GuestLimits(timeout_s=timeout_s), named_graphs={"birds": birds_graph})

    yield make


def in_bounds(pointer: int, length: int) -> bool:
    return pointer + length <= MEMORY_SIZE


def pointer_near(valid: int, length: int = 0) -> st.SearchStrategy[int]:
    """The valid pointer, one running off the end of memory, or any u32."""
    return st.one_of(st.just(valid), st.integers(max(0, MEMORY_SIZE - length - 16), MEMORY_SIZE + 16), U32)


def test_wasi_nn_tensor_struct_and_dims(probe: Probe, new_call, hardening: HardeningLog) -> None:
    tensor_at, dims_at, data_at = 0x100, 0x200, 0x1000

    @PROPERTY_SETTINGS
    @given(
        context=st.just(0) | U32,
        index=st.just(0) | U32,
        tensor_ptr=pointer_near(tensor_at, 20),
        dims_ptr=pointer_near(dims_at, 16),
        dims_len=st.just(4) | st.integers(0, 10) | U32,
        dims=st.just(list(BIRDS_INPUT))
        | st.lists(st.sampled_from([0, 1, 3, 224, 2**32 - 1]) | U32, max_size=10),
        type_word=st.just(3) | st.just(2) | st.just(0xABCD0003) | U32,
        data_ptr=pointer_near(data_at, BIRDS_INPUT_BYTES),
        data_len=st.just(BIRDS_INPUT_BYTES) | st.integers(0, MEMORY_SIZE) | U32,
    )
    def check(context, index, tensor_ptr, dims_ptr, dims_len, dims, type_word, data_ptr, data_len) -> None:
        probe.fill()
        with running(new_call()):
            handle = probe.open_context()
            probe.write(dims_ptr, struct.pack(f"<{len(dims)}I", *dims))
            probe.write(tensor_ptr, struct.pack("<5I", dims_ptr, dims_len, type_word, data_ptr, data_len))
            before = probe.view().copy()
            errno = probe.call("set_input", context if context else handle, index, tensor_ptr)
            assert np.array_equal(probe.view(), before)  # set_input never writes guest memory
        # What the rules say, from what is in memory now.
        valid = in_bounds(tensor_ptr, 20)
        if valid:
            d_ptr, d_len, t_word, p_data, n_data = struct.unpack(
                "<5I", before[tensor_ptr : tensor_ptr + 20].tobytes()
            )
            valid = (
                d_len <= 8
                and in_bounds(d_ptr, 4 * d_len)
                and in_bounds(p_data, n_data)
                and context in (0, handle)
                and index == 0
                and n_data == BIRDS_INPUT_BYTES
                and d_len == 4
                and struct.unpack("<4I", before[d_ptr : d_ptr + 16].tobytes()) == BIRDS_INPUT
                and t_word & 0xFF in U8_TYPE_CODES
            )
        assert errno == (0 if valid else INVALID_ARGUMENT)

    check()
    hardening.record(
        "properties",
        "wasi-nn set_input",
        "200 calls with arbitrary context, index, tensor pointer and struct fields "
        "(dims pointer/length/values, type, data pointer/length) in a wasm module's memory",
        "held",
        "errno 0 exactly when the struct is valid, else 1 (invalid_argument); no trap; memory untouched",
    )


def test_wasi_nn_output_buffer(probe: Probe, new_call, hardening: HardeningLog) -> None:
    out_at, written_at = 0x2000, 0x80

    @PROPERTY_SETTINGS
    @given(
        index=st.just(0) | U32,
        out_ptr=pointer_near(out_at, BIRDS_OUTPUT_BYTES),
        out_max=st.just(BIRDS_OUTPUT_BYTES) | st.integers(0, 2 * BIRDS_OUTPUT_BYTES) | U32,
        written_ptr=pointer_near(written_at, 4),
    )
    def check(index, out_ptr, out_max, written_ptr) -> None:
        probe.fill()
        with running(new_call()):
            handle = probe.open_context()
            before = probe.view().copy()
            errno = probe.call("get_output", handle, index, out_ptr, out_max, written_ptr)
            after = probe.view().copy()
        valid = in_bounds(written_ptr, 4) and in_bounds(out_ptr, out_max) and index == 0
        valid = valid and out_max >= BIRDS_OUTPUT_BYTES
        assert errno == (0 if valid else INVALID_ARGUMENT)
        changed = np.flatnonzero(before != after)
        allowed = set(range(out_ptr, out_ptr + BIRDS_OUTPUT_BYTES)) | set(range(written_ptr, written_ptr + 4))
        assert valid or changed.size == 0
        assert set(changed.tolist()) <= allowed
        if valid:
            assert (
                int.from_bytes(after[written_ptr : written_ptr + 4].tobytes(), "little") == BIRDS_OUTPUT_BYTES
            )

    check()
    hardening.record(
        "properties",
        "wasi-nn get_output",
        "200 calls with arbitrary index, output pointer and size, bytes-written pointer",
        "held",
        "errno 0 exactly when both buffers are in memory and big enough; writes there only, on success",
    )


def test_wasi_nn_graph_builders(probe: Probe, new_call, hardening: HardeningLog) -> None:
    builders_at, graph_out_at = 0x300, 0x90

    @PROPERTY_SETTINGS
    @given(
        builders_ptr=pointer_near(builders_at, 16),
        builders_len=st.integers(0, 20) | U32,
        entries=st.lists(st.tuples(pointer_near(0x1000, 100), st.integers(0, 4096) | U32), max_size=20),
        graph_out=pointer_near(graph_out_at, 4),
    )
    def check(builders_ptr, builders_len, entries, graph_out) -> None:
        probe.fill()
        probe.write(builders_ptr, b"".join(struct.pack("<2I", p, n) for p, n in entries))
        before = probe.view().copy()
        with running(new_call()):  # no graph cache: a load that gets past the checks is BUSY
            errno = probe.call("load", builders_ptr, builders_len, 4, 0, graph_out)
        assert np.array_equal(probe.view(), before)
        valid = in_bounds(graph_out, 4) and builders_len <= 16 and in_bounds(builders_ptr, 8 * builders_len)
        if valid:
            table = struct.unpack(
                f"<{2 * builders_len}I", before[builders_ptr : builders_ptr + 8 * builders_len].tobytes()
            )
            valid = all(in_bounds(table[2 * i], table[2 * i + 1]) for i in range(builders_len))
            valid = valid and builders_len == 1
        assert errno == (BUSY if valid else INVALID_ARGUMENT)

    check()
    hardening.record(
        "properties",
        "wasi-nn load (graph builders)",
        "200 calls with arbitrary builder array pointer, length and entries",
        "held",
        "errno 1 for any out-of-memory range or count other than 1, before any model is parsed; no trap",
    )


def test_wasmedge_image_pointers_and_sizes(probe: Probe, new_call, hardening: HardeningLog) -> None:
    png = (IMAGES / "mnist" / "sample0.png").read_bytes()
    png_at, out_at = 0x400, 0x8000

    @PROPERTY_SETTINGS
    @given(
        in_ptr=pointer_near(png_at, len(png)),
        in_len=st.just(len(png)) | st.integers(0, len(png)) | U32,
        width=st.integers(0, 64) | U32,
        height=st.integers(0, 64) | U32,
        out_type=st.integers(0, 4) | U32,
        out_ptr=pointer_near(out_at, 64 * 64 * 12),
        out_len=st.integers(0, 64 * 64 * 12) | U32,
    )
    def check(in_ptr, in_len, width, height, out_type, out_ptr, out_len) -> None:
        probe.fill()
        probe.write(png_at, png)
        before = probe.view().copy()
        with running(new_call()):
            errno = probe.call("load_image", in_ptr, in_len, width, height, out_type, out_ptr, out_len)
        after = probe.view()
        need = width * height * 3 * (4 if out_type in (2, 3) else 1)
        valid_call = (
            in_bounds(in_ptr, in_len)
            and out_type <= 3
            and out_len >= need
            and in_bounds(out_ptr, need)
            and 0 < width * height <= 16_000_000
        )
        changed = set(np.flatnonzero(before != after).tolist())
        if not valid_call:
            assert errno == 1 and not changed
        elif (in_ptr, in_len) == (png_at, len(png)):
            assert errno == 0 and changed <= set(range(out_ptr, out_ptr + need))
        else:  # other bytes than the PNG: they may or may not decode
            assert errno in (0, 1) and changed <= (
                set(range(out_ptr, out_ptr + need)) if errno == 0 else set()
            )

    check()
    hardening.record(
        "properties",
        "wasmedge_image load_image",
        "200 calls with arbitrary input and output pointers and sizes, width, height and output type",
        "held",
        "errno 0 when the call is valid, else 1 with guest memory untouched; no trap",
    )


def test_poll_oneoff_subscriptions(probe: Probe, new_call, hardening: HardeningLog) -> None:
    subs_at, events_at, nevents_at = 0x500, 0x900, 0xA0
    deadline_s = 0.05

    subscription = st.tuples(
        st.integers(0, 2**64 - 1),  # userdata
        st.sampled_from([0, 0, 1, 2, 3, 255]),  # tag
        st.sampled_from([0, 1, 1, 2, 7]) | U32,  # clock id
        st.sampled_from([0, 1_000, 1_000_000, 10**15, 2**64 - 1]),  # timeout, ns
        st.sampled_from([0, 1, 2, 0xFFFF]),  # flags
    )

    @settings(max_examples=60, deadline=None, print_blob=True)
    @given(
        subs=st.lists(subscription, max_size=4),
        count=st.integers(0, 5) | U32,
        events_ptr=pointer_near(events_at, 128),
        nevents_ptr=pointer_near(nevents_at, 4),
    )
    def check(subs, count, events_ptr, nevents_ptr) -> None:
        probe.fill()
        for i, (userdata, tag, clock, timeout, flags) in enumerate(subs):
            packed = struct.pack("<QB7xIxxxxQQH", userdata, tag, clock, timeout, 0, flags).ljust(48, b"\0")
            probe.write(subs_at + 48 * i, packed)
        before = probe.view().copy()
        call = new_call(timeout_s=deadline_s)
        started = time.monotonic()
        with running(call):
            try:
                errno = probe.call("poll_oneoff", subs_at, events_ptr, count, nevents_ptr)
            except wasmtime.Trap as trap:
                # A sleep that reaches the deadline ends the run (the guest traps on return): on a
                # loaded machine even a zero wait can find the 50 ms deadline already past.
                assert "interrupt" in str(trap) and call.deadline_hit, trap
                return
        assert time.monotonic() - started < deadline_s + 5  # never the 10**15 ns asked for
        after = probe.view()
        assert errno in (0, 21, 28)  # success, fault, inval
        changed = set(np.flatnonzero(before != after).tolist())
        valid = 1 <= count <= 4096 and in_bounds(subs_at, 48 * count) and in_bounds(events_ptr, 32 * count)
        valid = valid and in_bounds(nevents_ptr, 4)
        for i in range(count if valid else 0):
            tag = int(before[subs_at + 48 * i + 8])
            clock = int.from_bytes(before[subs_at + 48 * i + 16 : subs_at + 48 * i + 20].tobytes(), "little")
            valid = valid and tag in (0, 1, 2) and (tag != 0 or clock in (0, 1))
        assert errno == (0 if valid else 21 if errno == 21 else 28)
        if errno != 0:
            assert not changed
            return
        nevents = int.from_bytes(after[nevents_ptr : nevents_ptr + 4].tobytes(), "little")
        assert nevents <= count
        assert changed <= set(range(events_ptr, events_ptr + 32 * count)) | set(
            range(nevents_ptr, nevents_ptr + 4)
        )

    check()
    hardening.record(
        "properties",
        "WASI poll_oneoff",
        "60 calls with arbitrary subscriptions (types, clocks, timeouts up to 2^64 ns, flags), "
        f"counts and pointers, deadline {deadline_s} s",
        "held",
        "errno 0, 21 (fault) or 28 (inval); returns by the deadline; writes only the events and their count",
    )


def test_damaged_images_fail_with_an_image_error(hardening: HardeningLog) -> None:
    samples = [
        (IMAGES / "formats" / name).read_bytes()
        for name in ("hopper.jpg", "hopper.png", "hopper.gif", "hopper.bmp", "hopper.webp")
    ]

    @PROPERTY_SETTINGS
    @given(
        sample=st.sampled_from(samples),
        seed=st.integers(0, 2**32 - 1),
        cut=st.floats(0.0, 1.0),
        flips=st.integers(0, 12),
    )
    def check(sample: bytes, seed: int, cut: float, flips: int) -> None:
        rng = random.Random(seed)
        damaged = bytearray(sample[: max(1, int(len(sample) * cut))] if cut < 1.0 else sample)
        for _ in range(flips):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            pixels = decode_rgb(bytes(damaged), 32, 24)
        except ImageError as error:
            assert str(error)
        else:
            assert pixels.shape == (24, 32, 3) and pixels.dtype == np.uint8

    check()
    hardening.record(
        "properties",
        "image decoding",
        "200 JPEG, PNG, GIF, BMP and WebP images cut short and with up to 12 random bytes replaced",
        "held",
        "decoded to 32x24 RGB, or ImageError (invalid_argument for the caller); no other exception",
    )


def test_poll_oneoff_cases_the_property_may_not_draw(probe: Probe, new_call) -> None:
    """Pinned: an unknown clock, an absolute monotonic time already past, an fd subscription
    beside a long clock (it fires at once, the clock does not)."""
    subs_at, events_at, nevents_at = 0x500, 0x900, 0xA0

    def poll(
        *subscriptions: tuple[int, int, int, int, int],
    ) -> tuple[int, list[tuple[int, int, int]], list[str]]:
        probe.fill()
        for i, (userdata, tag, clock, timeout, flags) in enumerate(subscriptions):
            packed = struct.pack("<QB7xIxxxxQQH", userdata, tag, clock, timeout, 0, flags).ljust(48, b"\0")
            probe.write(subs_at + 48 * i, packed)
        call = new_call()
        with running(call):
            errno = probe.call("poll_oneoff", subs_at, events_at, len(subscriptions), nevents_at)
        events = [
            struct.unpack_from("<QHB", probe.view().tobytes(), events_at + 32 * i)
            for i in range(probe.u32(nevents_at))
        ]
        return errno, events, call.notes

    # clock 2 (process CPU time) cannot be waited on: EINVAL, nothing written
    assert poll((7, 0, 2, 1_000, 0)) == (28, [], ["poll_oneoff: clock 2 cannot be waited on"])
    assert poll((8, 0, 1, 0, 1)) == (0, [(8, 0, 0)], [])  # monotonic, absolute 0: the run's start, past
    assert poll((9, 0, 1, 3600 * 10**9, 0), (10, 1, 0, 0, 0)) == (0, [(10, 0, 1)], [])  # fd_read ready
