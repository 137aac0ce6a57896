"""The wasm host's sandbox: fresh state per run, only what the host passes, limits, caching."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT, run_guest

from service.wasm.call import GuestLimits
from service.wasm.host import Preopen, WasmHost


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


def test_every_run_starts_from_a_fresh_instance(host, test_guests):
    outputs = [run_guest(host, test_guests["probe"], "counter").stdout for _ in range(3)]
    assert outputs == [b"count 1\n"] * 3


def test_no_byte_of_a_runs_memory_reaches_the_next(host, test_guests):
    """The probe fills 10 MiB of its memory (heap and grown pages) with a marker; the next run,
    grown as far, finds none. `again` shows the scan finds the marker where it is."""
    first = lines(run_guest(host, test_guests["probe"], "residue", "again").stdout)
    assert first[0] == "residue 0" and int(first[1].split()[1]) > 2_000_000
    for _ in range(3):
        assert lines(run_guest(host, test_guests["probe"], "residue").stdout) == ["residue 0"]


def test_args_reach_the_guest_after_its_name(host, test_guests):
    result = run_guest(host, test_guests["probe"], "args", "a b", "--x=1")
    assert lines(result.stdout) == ["arg probe.wasm", "arg args", "arg a b", "arg --x=1"]


def test_guest_sees_only_the_environment_the_host_passes(host, test_guests, monkeypatch):
    monkeypatch.setenv("HOST_SECRET", "do-not-leak")
    result = run_guest(host, test_guests["probe"], "env", env=(("MODE", "test"),))
    assert lines(result.stdout) == ["env MODE=test", "env-end"]


def test_stdin_bytes_reach_the_guest_intact(host, test_guests):
    data = bytes(range(256)) * 1000
    expected = 0
    for byte in data:
        expected = (expected * 31 + byte) % 1000000007
    result = run_guest(host, test_guests["probe"], "stdin", stdin=data)
    assert result.stdout.decode() == f"bytes {len(data)} hash {expected}\n"


def test_exit_code_and_stderr_are_captured(host, test_guests):
    assert run_guest(host, test_guests["probe"], "exit", "3").exit_code == 3
    result = run_guest(host, test_guests["probe"], "stderr", "to stderr")
    assert (result.exit_code, result.stderr, result.stdout) == (0, b"to stderr\n", b"")


def test_no_filesystem_without_preopens(host, test_guests):
    result = run_guest(host, test_guests["probe"], "read", "/etc/passwd")
    assert result.stdout.startswith(b"read-failed")


def test_preopened_directory_is_read_only(host, test_guests, tmp_path):
    (tmp_path / "data.txt").write_text("hello")
    preopen = (Preopen(tmp_path, "/data"),)
    assert run_guest(host, test_guests["probe"], "read", "/data/data.txt", preopens=preopen).stdout == (
        b"read 5\n"
    )
    result = run_guest(host, test_guests["probe"], "write", "/data/new.txt", preopens=preopen)
    assert result.stdout.startswith(b"write-failed")
    assert not (tmp_path / "new.txt").exists()
    escaped = run_guest(host, test_guests["probe"], "read", "/data/../../etc/passwd", preopens=preopen)
    assert escaped.stdout.startswith(b"read-failed")


def test_writable_preopen_when_asked(host, test_guests, tmp_path):
    preopen = (Preopen(tmp_path, "/out", writable=True),)
    result = run_guest(host, test_guests["probe"], "write", "/out/new.txt", preopens=preopen)
    assert result.stdout == b"write-ok\n"
    assert (tmp_path / "new.txt").read_text() == "written by a guest\n"


def test_endless_loop_is_stopped_at_the_deadline(host, test_guests):
    result = run_guest(host, test_guests["probe"], "loop", limits=GuestLimits(timeout_s=0.3))
    assert result.exit_code is None and result.deadline_exceeded
    assert 0.25 < result.elapsed_s < 5
    assert run_guest(host, test_guests["probe"], "counter").stdout == b"count 1\n"


def test_memory_is_capped(host, test_guests):
    def allocated_mib(cap_mib: int) -> int:
        result = run_guest(host, test_guests["probe"], "grow", limits=GuestLimits(memory_bytes=cap_mib << 20))
        assert result.exit_code == 0  # malloc returned NULL: the guest saw the cap, it did not trap
        return int(result.stdout.split()[1])

    small, large = allocated_mib(32), allocated_mib(64)
    assert 8 <= small < 32 and small + 12 <= large < 64


def test_output_is_capped(host, test_guests):
    result = run_guest(
        host, test_guests["probe"], "flood", limits=GuestLimits(output_bytes=4096, timeout_s=5)
    )
    assert result.output_overflow and len(result.stdout) == 4096


def test_trap_is_reported_not_raised(host, test_guests):
    result = run_guest(host, test_guests["probe"], "trap")
    assert result.exit_code is None and result.trap and not result.deadline_exceeded


def test_compiled_guest_is_cached_on_disk_and_reused(test_guests, tmp_path):
    wasm = test_guests["probe"].read_bytes()
    first = WasmHost(tmp_path)
    try:
        first.load_guest(wasm)
    finally:
        first.close()
    cached = list(tmp_path.glob("*.cwasm"))
    assert len(cached) == 1 and cached[0].name.startswith(__import__("hashlib").sha256(wasm).hexdigest())
    cached_mtime = cached[0].stat().st_mtime_ns
    second = WasmHost(tmp_path)
    try:
        guest = second.load_guest(wasm)
        result = second.run(guest, ["counter"], call=__import__("service.wasm.call").wasm.call.GuestCall())
    finally:
        second.close()
    assert result.stdout == b"count 1\n"
    assert cached[0].stat().st_mtime_ns == cached_mtime


def test_corrupt_cache_entry_is_recompiled(test_guests, tmp_path):
    wasm = test_guests["probe"].read_bytes()
    host = WasmHost(tmp_path)
    try:
        host.load_guest(wasm)
        (entry,) = tmp_path.glob("*.cwasm")
        entry.write_bytes(b"garbage")
        fresh = WasmHost(tmp_path)
        fresh.load_guest(wasm)
        fresh.close()
        assert entry.read_bytes() != b"garbage"
    finally:
        host.close()


def test_invalid_wasm_and_unknown_imports_are_clear_errors(host, tmp_path: Path):
    import pytest

    from service.errors import ClassifierError

    with pytest.raises(ClassifierError, match="not a valid wasm module"):
        host.load_guest(b"\0asm garbage")
    import wasmtime

    wasm = wasmtime.wat2wasm('(module (import "nowhere" "f" (func)) (func (export "_start")))')
    with pytest.raises(ClassifierError, match="cannot be linked"):
        host.load_guest(wasm)


EXIT_SCRIPT = """
import sys
from pathlib import Path
from service.wasm.call import GuestCall
from service.wasm.host import WasmHost
host = WasmHost(None)
guest = host.load_guest_file(Path(sys.argv[1]))
for _ in range(100):
    result = host.run(guest, ["stderr", "x"], call=GuestCall())
    assert result.stderr == b"x\\n", result
print("done")
"""


def test_a_process_that_ran_guests_exits_cleanly(test_guests):
    # Captured output used to be released from a wasmtime thread taking the GIL after the
    # run; while Python was exiting, that aborted the process (SIGABRT) in 1 exit in 5.
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", EXIT_SCRIPT, str(test_guests["probe"])],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert (process.returncode, stdout) == (0, b"done\n"), stderr.decode()[-2000:]


def test_the_private_wasmtime_api_used_is_still_there() -> None:
    """service/wasm/wasmtime_capi.py is the one user of wasmtime-py's private bindings: an upgrade
    that renames or reshapes them must fail here, not as a crash inside a guest run."""
    from service.wasm import wasmtime_capi

    wasmtime_capi.check()


def test_a_module_without_start_is_refused_as_not_a_command(host):
    import pytest
    import wasmtime

    from service.errors import ClassifierError, ErrorKind
    from service.wasm.call import GuestCall

    reactor = host.load_guest(wasmtime.wat2wasm('(module (memory (export "memory") 1))'), "reactor")
    with pytest.raises(ClassifierError) as exc:
        host.run(reactor, [], call=GuestCall())
    assert exc.value.kind == ErrorKind.INVALID_ARGUMENT
    assert exc.value.message == "guest 'reactor' is not a WASI command (no _start)"


def test_a_module_asking_more_memory_than_the_limit_fails_to_instantiate(host):
    import wasmtime

    from service.wasm.call import GuestCall

    wasm = wasmtime.wat2wasm('(module (memory (export "memory") 64) (func (export "_start")))')  # 4 MiB
    guest = host.load_guest(wasm, "big")
    result = host.run(guest, [], call=GuestCall(limits=GuestLimits(memory_bytes=1 << 20)))
    assert (result.exit_code, result.trap_reason) == (None, "instantiation")
    assert result.trap and "memory" in result.trap
    assert host.run(guest, [], call=GuestCall()).exit_code == 0  # within the default limit it runs


def test_poll_oneoff_from_a_module_without_memory_traps(host):
    import wasmtime

    from service.wasm.call import GuestCall

    wasm = wasmtime.wat2wasm(
        """(module
          (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
          (func (export "_start")
            (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"""
    )
    result = host.run(host.load_guest(wasm, "no-memory"), [], call=GuestCall())
    assert result.exit_code is None and result.trap is not None
    assert "guest exports no memory" in result.trap
