"""Hostile and odd inputs through service invocation and pub/sub, against `classifier serve`.

Every case gets a clear answer: a gRPC status with a JSON error body for invocations; for
events, SUCCESS with the result published, or DROP with the error published (and the event
dead-lettered), RETRY only for what may pass. The service keeps serving after each case, and
its memory stays bounded while it processes them (read from /proc/<pid>/status).
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import IMAGES
from daprd import FakeDaprd, InvokeResult
from hardening import HardeningLog
from PIL import Image
from service_process import ServiceProcess, error_of, new_daprd, results_for, upload

from service.edge.classifier_pb2 import ClassifyRequest, ClassifyResponse
from service.imaging import DEFAULT_MAX_PIXELS, ImageError, decode_rgb

BIRD = (IMAGES / "classify" / "bird.jpg").read_bytes()
BURGER = (IMAGES / "classify" / "burger.jpg").read_bytes()
SPARROW = (IMAGES / "classify" / "sparrow.png").read_bytes()
BIRD_INDEX, BURGER_INDEX = 166, 934  # birds' answer for bird.jpg, mobilenet's for burger.jpg
MESSAGE_MIB = 4  # the app's message limit in these tests (CLASSIFIER_MAX_MESSAGE_MB)
WORKERS = 2
MIB = 1 << 20
CONCURRENCY = 8  # callers at once in the memory test
HOSTILE_PEAK_MIB = CONCURRENCY * (2 * MESSAGE_MIB) * 2  # 8 bodies of up to 8 MiB in flight, each held twice


def _zeroed(data: bytes, start: int, count: int) -> bytes:
    damaged = bytearray(data)
    damaged[start : start + count] = bytes(count)
    return bytes(damaged)


def _json(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _solid_png(width: int, height: int) -> bytes:
    """A large image in a small file: a single colour compresses to almost nothing."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    id: str
    tried: str
    body: bytes
    content_type: str = "application/octet-stream"
    expected: str = "invalid_argument"  # "ok", or the error code
    query: str = ""  # invocations only: the HTTP query string daprd passes on
    pubsub: bool = True  # also delivered as an event


ODD_OK = {
    "Channel_digital_image_CMYK_color_no_profile.jpg",
    "concert.jpg",
    "hopper_gray.jpg",
    "hopper_orientation_3.jpg",
    "hopper_orientation_6.jpg",
    "orientation_rectangle.jpg",
    "pil_sample_cmyk.jpg",
    "rgb6X4.bmp",
}
ODD_FILES = sorted(p for p in (IMAGES / "odd").rglob("*") if p.is_file())
assert ODD_FILES, "../shared/images/odd is empty"

CASES = [
    Case("empty", "an empty body", b""),
    Case("random", "4 KiB of random bytes", random.Random(6).randbytes(4096)),
    Case("zeros", "1000 zero bytes", bytes(1000)),
    Case("truncated jpeg", "bird.jpg cut in half", BIRD[: len(BIRD) // 2]),
    Case("corrupt jpeg", "bird.jpg with 300 header bytes zeroed", _zeroed(BIRD, 2, 300)),
    Case("corrupt png", "sparrow.png with 64 bytes of image data zeroed", _zeroed(SPARROW, 2000, 64)),
    Case("truncated png", "sparrow.png cut to a third", SPARROW[: len(SPARROW) // 3]),
    *(
        Case(
            f"odd/{path.relative_to(IMAGES / 'odd')}",
            f"{path.stat().st_size} bytes" + (" (decompression bomb)" if "large" in path.parts else ""),
            path.read_bytes(),
            expected="ok" if path.name in ODD_OK else "invalid_argument",
        )
        for path in ODD_FILES
    ),
    Case(
        "unknown model",
        "JSON naming model `nope`",
        _json(image_base64=_b64(BIRD), model="nope"),
        "application/json",
        "not_found",
    ),
    Case(
        "model name traversal", "?model=../../etc/passwd", BIRD, query="model=../../etc/passwd", pubsub=False
    ),
    Case(
        "model name newline",
        'JSON model "birds\\n"',
        _json(image_base64=_b64(BIRD), model="birds\n"),
        "application/json",
    ),
    Case("malformed json", '`{"image_base64": ` (cut short)', b'{"image_base64": ', "application/json"),
    Case("json without image", "`{}`", b"{}", "application/json"),
    Case("json wrong type", '`{"image_base64": 5}`', b'{"image_base64": 5}', "application/json"),
    Case("json bad base64", '`{"image_base64": "@@@"}`', b'{"image_base64": "@@@"}', "application/json"),
    Case(
        "json nested deeply",
        "a JSON body nested 100000 arrays deep",
        b'{"image_base64": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "application/json",
    ),
    Case(
        "image_url",
        "JSON image_url (no allowlist configured)",
        _json(image_url="http://127.0.0.1:1/a.jpg"),
        "application/json",
    ),
    Case(
        "malformed protobuf",
        "bytes that are no ClassifyRequest",
        b"\xff\x00garbage",
        "application/x-protobuf",
    ),
    Case(
        "protobuf unknown model",
        "ClassifyRequest naming model `nope`",
        ClassifyRequest(image=BIRD, model="nope").SerializeToString(),
        "application/x-protobuf",
        "not_found",
    ),
    Case(
        "protobuf top_k max u32",
        "ClassifyRequest with top_k 4294967295",
        ClassifyRequest(image=BIRD, top_k=2**32 - 1).SerializeToString(),
        "application/x-protobuf",
    ),
    *(
        Case(
            f"top_k {label}",
            f"JSON top_k {label}",
            _json(image_base64=_b64(BIRD), top_k=value),
            "application/json",
        )
        for label, value in [
            ("0", 0),
            ("-1", -1),
            ("1e9", 10**9),
            ("2^70", 2**70),
            ('"5"', "5"),
            ("5.5", 5.5),
            ("true", True),
        ]
    ),
    Case(
        "top_k 965",
        "JSON top_k 965 (every class)",
        _json(image_base64=_b64(BIRD), top_k=965),
        "application/json",
        "ok",
    ),
    Case("query top_k -3", "raw image, ?top_k=-3", BIRD, query="top_k=-3", pubsub=False),
    Case("query top_k abc", "raw image, ?top_k=abc", BIRD, query="top_k=abc", pubsub=False),
    Case(
        "over the message limit",
        f"a {MESSAGE_MIB + 1} MiB body (limit {MESSAGE_MIB} MiB)",
        b"\xff\xd8" + bytes((MESSAGE_MIB + 1) * MIB),
        expected="resource_exhausted",
    ),
    Case(
        "far over the message limit",
        f"a {2 * MESSAGE_MIB + 1} MiB body (over twice the limit: gRPC's own)",
        b"\xff\xd8" + bytes((2 * MESSAGE_MIB + 1) * MIB),
        expected="grpc:RESOURCE_EXHAUSTED",
    ),
]
CASE_IDS = [case.id for case in CASES]
STATUS_OF_CODE = {
    "ok": grpc.StatusCode.OK,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "grpc:RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def start_service(workdir: Path, **env: str) -> ServiceProcess:
    daprd = new_daprd()
    upload(daprd, workdir, "birds", "aiy_birds_v1")
    upload(daprd, workdir, "mobilenet", "mobilenet_v2_1.0_224_quant")
    process = ServiceProcess(
        daprd,
        workdir,
        CLASSIFIER_DEFAULT_MODEL="birds",
        CLASSIFIER_MAX_MESSAGE_MB=str(MESSAGE_MIB),
        CLASSIFIER_WORKERS=str(WORKERS),
        **env,
    )
    process.wait_ready()
    return process


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = start_service(tmp_path_factory.mktemp("inputs"))
    try:
        yield process
        assert process.terminate() == 0
    finally:
        process.kill()
        process.daprd.close()


def classify_bird(daprd: FakeDaprd) -> bool:
    result = daprd.invoke("classify", BIRD, content_type="application/octet-stream")
    return (
        result.code == grpc.StatusCode.OK and json.loads(result.data)["predictions"][0]["index"] == BIRD_INDEX
    )


def serves_normally(daprd: FakeDaprd, requests: int = 2 * WORKERS + 1) -> bool:
    with ThreadPoolExecutor(requests) as pool:
        answers = list(pool.map(lambda _: classify_bird(daprd), range(requests)))
    return daprd.health_check() and all(answers)


def invoke(daprd: FakeDaprd, case: Case) -> InvokeResult:
    return daprd.invoke("classify", case.body, content_type=case.content_type, querystring=case.query)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_invocation_gets_a_clear_answer(service: ServiceProcess, hardening: HardeningLog, case: Case) -> None:
    daprd = service.daprd
    result = invoke(daprd, case)
    assert result.code == STATUS_OF_CODE.get(case.expected, grpc.StatusCode.INVALID_ARGUMENT), result.details
    if case.expected == "ok":
        response = json.loads(result.data)
        assert response["predictions"] and response["model"] == "birds"
        error = ""
    elif case.expected.startswith("grpc:"):
        error = result.details  # refused by gRPC before the handler: no JSON body
        assert "larger than max" in error
    else:
        body = error_of(result)
        assert body["code"] == case.expected and body["message"]
        error = f"{body['code']}: {body['message']}"
    healthy = serves_normally(daprd)
    hardening.record("inputs: invoke", case.id, case.tried, result.code.name, error, healthy)
    assert healthy


@pytest.mark.parametrize("case", [c for c in CASES if c.pubsub], ids=[c.id for c in CASES if c.pubsub])
def test_event_gets_a_clear_answer(service: ServiceProcess, hardening: HardeningLog, case: Case) -> None:
    daprd = service.daprd
    event_id = f"input-{case.id}"
    delivery = daprd.deliver("pubsub", "images", case.body, case.content_type, event_id=event_id)
    if case.expected == "ok":
        assert (delivery.status, delivery.attempts) == ("SUCCESS", 1), delivery
        assert results_for(daprd, event_id)["predictions"]
        outcome, error = "SUCCESS", ""
    elif case.expected.startswith("grpc:"):
        # Refused by gRPC before the handler: daprd retries per its policy, then dead-letters.
        assert (
            delivery.status == "RETRY"
            and delivery.dead_lettered
            and "RESOURCE_EXHAUSTED" in delivery.last_error
        )
        outcome, error = f"RETRY x{delivery.attempts}, dead-lettered", delivery.last_error
    else:
        assert (delivery.status, delivery.attempts, delivery.dead_lettered) == ("DROP", 1, True), delivery
        body = results_for(daprd, event_id)["error"]
        assert body["code"] == case.expected and body["message"]
        outcome, error = "DROP, dead-lettered", f"{body['code']}: {body['message']}"
    normal = daprd.deliver("pubsub", "images", BIRD, "application/octet-stream", event_id=f"{event_id}-next")
    healthy = normal.status == "SUCCESS" and serves_normally(daprd)
    hardening.record(
        "inputs: pub/sub", case.id, case.tried + f" ({case.content_type})", outcome, error, healthy
    )
    assert healthy


def test_packed_message_of_the_wrong_type(service: ServiceProcess, hardening: HardeningLog) -> None:
    result = service.daprd.invoke_packed("classify", ClassifyResponse(model="birds"))
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT
    body = error_of(result)
    assert body["code"] == "invalid_argument" and "ClassifyRequest" in body["message"]
    healthy = serves_normally(service.daprd)
    hardening.record(
        "inputs: invoke",
        "packed message of another type",
        "an Any-packed ClassifyResponse",
        result.code.name,
        f"{body['code']}: {body['message']}",
        healthy,
    )
    assert healthy


def test_concurrent_requests_never_cross(service: ServiceProcess, hardening: HardeningLog) -> None:
    """Two images for two models, by invocation and by event at once: each answer is its own."""
    daprd = service.daprd
    burger = _json(image_base64=_b64(BURGER), model="mobilenet")

    def job(i: int) -> bool:
        if i % 4 == 0:
            return classify_bird(daprd)
        if i % 4 == 1:
            result = daprd.invoke("classify", burger)
            return (
                result.code == grpc.StatusCode.OK
                and json.loads(result.data)["predictions"][0]["index"] == BURGER_INDEX
            )
        body, content_type, index = (
            (BIRD, "application/octet-stream", BIRD_INDEX)
            if i % 4 == 2
            else (burger, "application/json", BURGER_INDEX)
        )
        event_id = f"cross-{i}"
        delivery = daprd.deliver("pubsub", "images", body, content_type, event_id=event_id)
        return (
            delivery.status == "SUCCESS" and results_for(daprd, event_id)["predictions"][0]["index"] == index
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(job, range(48)))
    assert all(answers), answers
    hardening.record(
        "sandbox",
        "concurrent requests",
        "48 requests at concurrency 8: bird.jpg to birds, burger.jpg to mobilenet, by invocation and event",
        "OK",
        "every answer is its own image's (birds 166, mobilenet 934)",
        serves_normally(daprd),
    )


# -- memory --------------------------------------------------------------------------------------


def test_memory_stays_bounded(tmp_path: Path, hardening: HardeningLog) -> None:
    """A fresh service with default limits: hostile inputs cost no memory beyond their own size;
    the largest image the limits allow costs its pixels, and the memory is returned after."""
    process = start_service(tmp_path)
    daprd = process.daprd
    try:
        for _ in range(10):
            assert classify_bird(daprd)
        before = process.memory_kib()
        hostile = [c for c in CASES if c.expected != "ok"]

        def send(i: int) -> None:
            case = hostile[i % len(hostile)]
            if i % 2:
                invoke(daprd, case)
            elif case.pubsub:
                daprd.deliver("pubsub", "images", case.body, case.content_type, event_id=f"memory-{i}")

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(send, range(3 * 2 * len(hostile))))  # every case 3 times each way
        after_hostile = process.memory_kib()
        largest = _solid_png(9000, 7000)  # 63 Mpx: under the default 64 Mpx limit, in 0.2 MB
        result = daprd.invoke("classify", largest, content_type="application/octet-stream")
        assert result.code == grpc.StatusCode.OK, result.details
        after_largest = process.memory_kib()
        healthy = serves_normally(daprd)
    finally:
        assert process.terminate() == 0
        daprd.close()

    def mib(kib: int) -> float:
        return round(kib / 1024, 1)

    hostile_peak = mib(after_hostile["VmHWM"] - before["VmHWM"])
    largest_peak = mib(after_largest["VmHWM"] - before["VmHWM"])
    rss_after = mib(after_largest["VmRSS"] - before["VmRSS"])
    print(
        f"\nmemory: baseline RSS {mib(before['VmRSS'])} MiB, peak {mib(before['VmHWM'])} MiB; "
        f"peak +{hostile_peak} MiB over the hostile inputs, +{largest_peak} MiB with a 63 Mpx image; "
        f"RSS after {rss_after:+} MiB"
    )
    hardening.measure("memory: baseline RSS after warm-up (MiB)", mib(before["VmRSS"]))
    hardening.measure(
        "memory: peak growth over all hostile inputs x3, invoke and pub/sub (MiB)", hostile_peak
    )
    hardening.measure("memory: peak growth with a 63 Mpx PNG (MiB)", largest_peak)
    hardening.measure("memory: RSS growth after all of it (MiB)", rss_after)
    # Bounds, generous for allocator noise. The hostile inputs are refused from their headers or
    # first bytes: what they cost is their bodies, 8 in flight of at most 2 x 4 MiB (beyond that
    # gRPC refuses them unread), each held a few times over (gRPC, the request, the guest's stdin).
    # A 63 Mpx image decodes to 240 MiB (Pillow keeps RGB at 4 bytes a pixel), once: no copies.
    assert hostile_peak < HOSTILE_PEAK_MIB
    assert largest_peak < 63 * 4 + 64
    assert rss_after < 64
    hardening.record(
        "inputs: invoke",
        "memory while processing these",
        "every failing case above 3 times by invocation and by event at concurrency 8, then one 63 Mpx PNG "
        "(a fresh service, default limits)",
        "bounded",
        f"peak growth < {HOSTILE_PEAK_MIB} MiB for the failing inputs, < 4 bytes a pixel + 64 MiB for the "
        "63 Mpx image; "
        "RSS back within 64 MiB",
        healthy,
    )
    assert healthy


def test_the_pixel_limit_is_the_configured_one(hardening: HardeningLog) -> None:
    hopper = (IMAGES / "formats" / "hopper.jpg").read_bytes()  # 128x128
    with pytest.raises(ImageError, match="128x128 = 16384 pixels, over the limit of 16383"):
        decode_rgb(hopper, 32, 32, max_pixels=16383)
    assert decode_rgb(hopper, 32, 32, max_pixels=16384).shape == (32, 32, 3)
    bomb = (IMAGES / "odd" / "large" / "giant-image.jpg").read_bytes()
    with pytest.raises(ImageError, match=f"over the limit of {DEFAULT_MAX_PIXELS}$"):
        decode_rgb(bomb, 224, 224)
    hardening.record(
        "inputs: invoke",
        "pixel limit",
        "a 128x128 JPEG under limits of 16383 and 16384 pixels; the 280 Mpx JPEG under the default",
        "refused / decoded / refused",
        "the limit named is the configured one, checked from the header before decoding",
    )


def test_serve_caps_malloc_arenas_unless_the_operator_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.edge.app import limit_malloc_arenas

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas(2) is True  # glibc here: mallopt accepted it
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas(2) is False  # glibc read the operator's value at start: kept
