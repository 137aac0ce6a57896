"""Hostile business logic: guest limits and the sandbox, through the running service.

`classifier serve` runs with wasm/testguests/hostile.c as its guest (CLASSIFIER_GUEST), with
tight limits set through the environment. That guest classifies images normally (top-1) but
misbehaves when its stdin starts with `HOSTILE <mode>`, so each case can show both that the
hostile request fails with a clear error and that the same service answers the next normal
requests - more of them than it has workers, so a worker left stuck would show.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import wasmtime
from conftest import IMAGES, run_guest
from daprd import FakeDaprd
from hardening import HardeningLog
from service_process import ServiceProcess, error_of, new_daprd, results_for, upload

from service.config import Settings
from service.errors import ClassifierError
from service.imaging import DEFAULT_MAX_PIXELS
from service.wasm.call import GuestLimits
from service.wasm.host import WasmHost

BIRD = (IMAGES / "classify" / "bird.jpg").read_bytes()
BIRD_INDEX = 166  # aiy_birds_v1's answer for bird.jpg
WORKERS = 2
TIMEOUT_S = 1
MEMORY_MIB = 64
OUTPUT_KIB = 64

# Wasi errnos a socket call may fail with here: badf, notsock, notsup.
SOCKET_ERRNOS = {8, 57, 58}
NN_NOT_FOUND = 8


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory, test_guests: dict[str, Path]
) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("hostile")
    daprd = new_daprd()
    upload(daprd, workdir, "birds", "aiy_birds_v1")
    upload(daprd, workdir, "mobilenet", "mobilenet_v2_1.0_224_quant")
    process = ServiceProcess(
        daprd,
        workdir,
        CLASSIFIER_GUEST=str(test_guests["hostile"]),
        CLASSIFIER_DEFAULT_MODEL="birds",
        CLASSIFIER_WORKERS=str(WORKERS),
        CLASSIFIER_TIMEOUT_S=str(TIMEOUT_S),
        CLASSIFIER_MAX_MEMORY_MB=str(MEMORY_MIB),
        CLASSIFIER_MAX_OUTPUT_KB=str(OUTPUT_KIB),
    )
    try:
        process.wait_ready()
        yield process
        assert process.terminate() == 0
    finally:
        process.kill()
        daprd.close()


def classify_bird(daprd: FakeDaprd) -> bool:
    result = daprd.invoke("classify", BIRD, content_type="application/octet-stream")
    return (
        result.code == grpc.StatusCode.OK and json.loads(result.data)["predictions"][0]["index"] == BIRD_INDEX
    )


def serves_normally(daprd: FakeDaprd, requests: int = 2 * WORKERS + 1) -> bool:
    """Healthy, and more normal requests than workers all succeed (none waits on a stuck worker:
    each call has the double's 10 s timeout)."""
    with ThreadPoolExecutor(requests) as pool:
        answers = list(pool.map(lambda _: classify_bird(daprd), range(requests)))
    return daprd.health_check() and all(answers)


def hostile_body(mode: str, payload: bytes = b"") -> bytes:
    return f"HOSTILE {mode}\n".encode() + payload


# mode, payload, gRPC status, error code, what the message says
HOSTILE_CASES = [
    ("loop", b"", grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded", f"deadline of {TIMEOUT_S} s"),
    ("grow", b"", grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", f"limit {MEMORY_MIB} MiB"),
    ("trap", b"", grpc.StatusCode.INTERNAL, "guest_failed", "unreachable"),
    ("exit 3", b"", grpc.StatusCode.INTERNAL, "guest_failed", "exited with code 3"),
    ("flood", b"", grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", f"{OUTPUT_KIB << 10} bytes"),
    ("flood-stderr", b"", grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", "bytes of output"),
    ("oob", b"", grpc.StatusCode.INTERNAL, "guest_failed", "out of bounds memory access"),
    ("wildptr", b"", grpc.StatusCode.INTERNAL, "guest_failed", "outside guest memory"),
    ("compute-loop", b"", grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded", "deadline"),
    ("decode-loop", BIRD, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded", "deadline"),
    ("sleep 3600", b"", grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded", "deadline"),
]
WHAT = {
    "loop": "spins forever",
    "grow": "mallocs 1 MiB blocks until refused, then aborts",
    "trap": "executes `unreachable`",
    "exit 3": "exits with code 3",
    "flood": "writes to stdout forever, ignoring errors",
    "flood-stderr": "writes to stderr forever, ignoring errors",
    "oob": "stores past the end of its linear memory",
    "wildptr": "passes out-of-range pointers to wasi-nn and wasmedge_image",
    "compute-loop": "calls wasi-nn compute forever (host work)",
    "decode-loop": "decodes an image forever (host work)",
    "sleep 3600": "sleeps an hour (WASI poll_oneoff)",
}
LIMITS = f"timeout {TIMEOUT_S} s, memory {MEMORY_MIB} MiB, output {OUTPUT_KIB} KiB"


@pytest.mark.parametrize(
    ("mode", "payload", "status", "code", "fragment"), HOSTILE_CASES, ids=[c[0] for c in HOSTILE_CASES]
)
def test_hostile_guest_fails_its_own_request_only(
    hostile: ServiceProcess,
    hardening: HardeningLog,
    mode: str,
    payload: bytes,
    status: grpc.StatusCode,
    code: str,
    fragment: str,
) -> None:
    daprd = hostile.daprd
    result = daprd.invoke("classify", hostile_body(mode, payload), content_type="application/octet-stream")
    assert result.code == status, result.details
    error = error_of(result)
    assert error["code"] == code and fragment in error["message"], error
    healthy = serves_normally(daprd)
    hardening.record(
        "guest limits",
        f"guest {mode.split()[0]} (invoke)",
        f"a guest that {WHAT[mode]} ({LIMITS})",
        result.code.name,
        f"{error['code']}: {error['message']}",
        healthy,
    )
    assert healthy


@pytest.mark.parametrize(
    ("mode", "payload", "status", "code", "fragment"), HOSTILE_CASES, ids=[c[0] for c in HOSTILE_CASES]
)
def test_hostile_guest_event_is_dropped_with_its_error(
    hostile: ServiceProcess,
    hardening: HardeningLog,
    mode: str,
    payload: bytes,
    status: grpc.StatusCode,
    code: str,
    fragment: str,
) -> None:
    daprd = hostile.daprd
    event_id = f"hostile-{mode.split()[0]}"
    body = hostile_body(mode, payload)
    delivery = daprd.deliver("pubsub", "images", body, "application/octet-stream", event_id=event_id)
    # Not transient: redelivering would fail the same way, so the event goes to the dead-letter topic.
    assert (delivery.status, delivery.attempts, delivery.dead_lettered) == ("DROP", 1, True), delivery
    error = results_for(daprd, event_id)["error"]
    assert error["code"] == code and fragment in error["message"], error
    normal = daprd.deliver("pubsub", "images", BIRD, "application/octet-stream", event_id=f"{event_id}-next")
    healthy = normal.status == "SUCCESS" and serves_normally(daprd)
    hardening.record(
        "guest limits",
        f"guest {mode.split()[0]} (pub/sub)",
        f"an image event for a guest that {WHAT[mode]}",
        f"{delivery.status}, dead-lettered",
        f"{error['code']}: {error['message']}",
        healthy,
    )
    assert healthy


def test_normal_requests_are_served_while_a_guest_spins(
    hostile: ServiceProcess, hardening: HardeningLog
) -> None:
    daprd = hostile.daprd
    with ThreadPoolExecutor(1) as pool:
        spinning = pool.submit(daprd.invoke, "classify", hostile_body("loop"), "application/octet-stream")
        answers = [classify_bird(daprd) for _ in range(4)]  # on the other worker meanwhile
        stopped = spinning.result()
    assert stopped.code == grpc.StatusCode.DEADLINE_EXCEEDED and all(answers)
    hardening.record(
        "guest limits",
        "normal requests beside a spinning guest",
        f"4 bird images, one after another, while a looping guest holds one of the {WORKERS} workers",
        "OK x4; the loop: DEADLINE_EXCEEDED",
        "",
        serves_normally(daprd),
    )


def test_limits_come_from_the_environment_with_safe_defaults(
    monkeypatch: pytest.MonkeyPatch, hardening: HardeningLog
) -> None:
    for name in (
        "CLASSIFIER_TIMEOUT_S",
        "CLASSIFIER_MAX_MEMORY_MB",
        "CLASSIFIER_MAX_OUTPUT_KB",
        "CLASSIFIER_MAX_IMAGE_PIXELS",
    ):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings.from_env().limits
    assert defaults == GuestLimits()
    assert (defaults.timeout_s, defaults.memory_bytes, defaults.output_bytes) == (10.0, 256 << 20, 1 << 20)
    assert defaults.max_image_pixels == DEFAULT_MAX_PIXELS
    monkeypatch.setenv("CLASSIFIER_TIMEOUT_S", "2.5")
    monkeypatch.setenv("CLASSIFIER_MAX_MEMORY_MB", "32")
    monkeypatch.setenv("CLASSIFIER_MAX_OUTPUT_KB", "8")
    monkeypatch.setenv("CLASSIFIER_MAX_IMAGE_PIXELS", "1000000")
    configured = Settings.from_env().limits
    assert (configured.timeout_s, configured.memory_bytes) == (2.5, 32 << 20)
    assert (configured.output_bytes, configured.max_image_pixels) == (8 << 10, 1_000_000)
    hardening.record(
        "guest limits",
        "configuration",
        "CLASSIFIER_TIMEOUT_S, _MAX_MEMORY_MB, _MAX_OUTPUT_KB, _MAX_IMAGE_PIXELS unset, then set",
        "defaults: 10 s, 256 MiB, 1 MiB per stream, 64 Mpx; the set values are used",
    )


# -- sleeping is bounded by the deadline (in-process) ----------------------------------------


def test_a_short_sleep_sleeps(host: WasmHost, test_guests: dict[str, Path]) -> None:
    started = time.monotonic()
    result = run_guest(
        host, test_guests["hostile"], stdin=hostile_body("sleep 1"), limits=GuestLimits(timeout_s=5)
    )
    assert result.exit_code == 0 and result.stdout == b'{"slept":true}\n'
    assert time.monotonic() - started >= 1.0


def test_a_long_sleep_ends_at_the_deadline(host: WasmHost, test_guests: dict[str, Path]) -> None:
    result = run_guest(
        host, test_guests["hostile"], stdin=hostile_body("sleep 3600"), limits=GuestLimits(timeout_s=0.3)
    )
    assert result.deadline_exceeded and result.exit_code is None
    assert result.elapsed_s < 30  # not the hour it asked for


def test_a_sleep_past_the_deadline_traps_without_waiting_for_the_epoch_ticker(
    tmp_path: Path, test_guests: dict[str, Path]
) -> None:
    # On a loaded CI machine the ticker thread woke too late and the guest ran on to exit 0.
    # With the ticker stopped, only the sleep itself can end the run.
    stalled = WasmHost(tmp_path / "module-cache")
    stalled.close()  # stops the ticker; the host still runs guests
    result = run_guest(
        stalled, test_guests["hostile"], stdin=hostile_body("sleep 3600"), limits=GuestLimits(timeout_s=0.2)
    )
    assert result.deadline_exceeded and result.exit_code is None and result.stdout == b""


# -- the sandbox --------------------------------------------------------------------------------


def test_guest_sees_no_environment_network_or_writable_filesystem(
    hostile: ServiceProcess, hardening: HardeningLog
) -> None:
    daprd = hostile.daprd
    result = daprd.invoke(
        "classify", hostile_body("sandbox mobilenet"), content_type="application/octet-stream"
    )
    assert result.code == grpc.StatusCode.OK, result.details
    probe = json.loads(result.data)["probe"]
    healthy = serves_normally(daprd)

    assert probe["env"] == []
    hardening.record(
        "sandbox",
        "environment",
        "list environ (the service has DAPR_*, CLASSIFIER_*, ...)",
        "OK",
        "no variables",
    )

    assert probe["preopens"] == ["/model"]
    assert sorted(probe["model_dir"]) == ["labels.txt", "manifest.json", "model.tflite"]
    assert probe["root_dir"] == "No such file or directory"
    hardening.record(
        "sandbox",
        "filesystem view",
        "list preopened dirs, /model and /",
        "OK",
        "only /model (this request's model: labels.txt, manifest.json, model.tflite); / does not exist",
    )

    assert all(outcome != "ok" for outcome in probe["write"].values()), probe["write"]
    assert probe["write"]["/model/planted.txt"] == "Operation not permitted"
    assert not list(hostile.log_path.parent.rglob("planted.txt"))
    hardening.record(
        "sandbox",
        "writes",
        "create " + ", ".join(probe["write"]),
        "OK",
        "; ".join(f"{path}: {outcome}" for path, outcome in probe["write"].items()),
    )

    assert all(outcome != "ok" for outcome in probe["read"].values()), probe["read"]
    hardening.record(
        "sandbox",
        "reads outside /model",
        "open " + ", ".join(probe["read"]),
        "OK",
        "; ".join(f"{path}: {outcome}" for path, outcome in probe["read"].items()),
    )

    for call in ("sock_accept", "sock_recv", "sock_send", "sock_shutdown"):
        assert set(probe[call]) <= SOCKET_ERRNOS, (call, probe[call])
    hardening.record(
        "sandbox",
        "network",
        "sock_accept on fds 0-7; sock_recv, sock_send, sock_shutdown on fds 0-3",
        "OK",
        "every call failed: "
        + "; ".join(f"{c} errnos {sorted(set(probe[c]))}" for c in ("sock_accept", "sock_recv")),
    )

    assert probe["other_model"] == NN_NOT_FOUND
    hardening.record(
        "sandbox",
        "another request's model",
        "wasi-nn load_by_name of a model the request did not ask for",
        "OK",
        "errno 8 not_found",
        healthy,
    )
    assert healthy


def test_socket_and_unknown_imports_cannot_be_linked(host: WasmHost, hardening: HardeningLog) -> None:
    imports = {  # name: (module, field)
        "preview1 sock_open": ("wasi_snapshot_preview1", "sock_open"),
        "wasi:sockets": ("wasi:sockets/tcp@0.2.0", "create-tcp-socket"),
        "wasi http": ("wasi:http/outgoing-handler@0.2.0", "handle"),
    }
    errors = []
    for name, (module, field) in imports.items():
        wasm = wasmtime.wat2wasm(
            f'(module (import "{module}" "{field}" (func (param i32) (result i32)))'
            ' (memory (export "memory") 1) (func (export "_start")))'
        )
        with pytest.raises(ClassifierError, match="cannot be linked") as error:
            host.load_guest(wasm, name)
        errors.append(f"{name}: {error.value.kind.value}")
    hardening.record(
        "sandbox",
        "network imports",
        "guests importing " + ", ".join(imports),
        "refused at load",
        "; ".join(errors) + " (cannot be linked)",
    )


def test_no_memory_of_earlier_requests(hostile: ServiceProcess, hardening: HardeningLog) -> None:
    daprd = hostile.daprd
    marker = "5eb1d7c04a2f4e6b9c1d8e7f60a3b2c1"

    def run(mode: str) -> dict:
        result = daprd.invoke("classify", hostile_body(mode), content_type="application/octet-stream")
        assert result.code == grpc.StatusCode.OK, result.details
        return json.loads(result.data)

    with ThreadPoolExecutor(WORKERS) as pool:  # every worker marks, then every worker scans
        marked = list(pool.map(run, [f"mark {marker}"] * 4))
        scans = list(pool.map(run, [f"scan {marker}"] * 4))
    assert all(m["marked"] > 0 for m in marked)
    assert [s["found"] for s in scans] == [0, 0, 0, 0]
    hardening.record(
        "sandbox",
        "memory of earlier requests",
        "4 requests fill 8 MiB with a marker, then 4 scan all their linear memory for it",
        "OK",
        "0 copies found",
    )

    for _ in range(4):
        assert classify_bird(daprd)
    peeks = [run("peek")["peek"] for _ in range(4)]
    assert all(p["errno"] == 0 and p["bytes"] == 965 and p["nonzero"] == 0 for p in peeks), peeks
    healthy = serves_normally(daprd)
    hardening.record(
        "sandbox",
        "tensors of earlier requests",
        "after 4 classifications, 4 requests read the output tensor without computing",
        "OK",
        "all 965 output bytes zero",
        healthy,
    )
    assert healthy
