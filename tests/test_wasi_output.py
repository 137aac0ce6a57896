"""The host's own fd_write (service/wasm/wasi_output.py): a run's stdout and stderr captured without
wasmtime's async streams, every other fd still written by wasmtime's WASI, bad arguments answered
with WASI's errnos."""

from __future__ import annotations

import wasmtime

from service.wasm.call import GuestCall, GuestLimits
from service.wasm.host import Preopen, WasmHost

# _start: a two-iovec write to stdout ("ab" + "cd"), one to stderr, then three bad calls whose
# errnos it writes to stdout as bytes: iovecs outside memory, too many iovecs, a closed fd.
WRITER = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "abcd")
  (data (i32.const 16) "\\00\\00\\00\\00\\02\\00\\00\\00\\02\\00\\00\\00\\02\\00\\00\\00")
  (data (i32.const 32) "\\c8\\00\\00\\00\\03\\00\\00\\00")
  (data (i32.const 48) "\\00\\00\\00\\00\\04\\00\\00\\00")
  (func (export "_start")
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 2) (i32.const 100)))
    (drop (call $fd_write (i32.const 2) (i32.const 48) (i32.const 1) (i32.const 100)))
    (i32.store8 (i32.const 200)
      (call $fd_write (i32.const 1) (i32.const 70000) (i32.const 1) (i32.const 100)))
    (i32.store8 (i32.const 201)
      (call $fd_write (i32.const 1) (i32.const 16) (i32.const 5000) (i32.const 100)))
    (i32.store8 (i32.const 202)
      (call $fd_write (i32.const 9) (i32.const 48) (i32.const 1) (i32.const 100)))
    (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 100)))))
"""


def run_writer(host: WasmHost, limits: GuestLimits | None = None) -> tuple[bytes, bytes, GuestCall]:
    guest = host.load_guest(wasmtime.wat2wasm(WRITER), "writer")
    call = GuestCall(limits=limits or GuestLimits())
    result = host.run(guest, [], call=call)
    assert result.exit_code == 0, result
    return result.stdout, result.stderr, call


def test_stdout_and_stderr_are_gathered_and_bad_writes_get_errnos(host):
    stdout, stderr, call = run_writer(host)
    # EFAULT (21), EINVAL (28), EBADF (8: from wasmtime's own fd_write)
    assert stdout == b"abcd" + bytes([21, 28, 8])
    assert stderr == b"abcd"
    assert any("outside guest memory" in note for note in call.notes), call.notes
    assert call.wasi_fd_write is not None  # fd 9 went to wasmtime's WASI


def test_output_past_the_cap_is_no_space(host):
    stdout, _, _ = run_writer(host, GuestLimits(output_bytes=3))
    # "abc" kept; every later write to the full stdout fails with ENOSPC (51), the errnos unwritten
    assert stdout == b"abc"


def test_writes_to_a_file_go_through_wasmtime_wasi_and_stdout_is_still_captured(host, test_guests, tmp_path):
    guest = host.load_guest_file(test_guests["probe"])
    for _ in range(2):  # the forwarder is per run: a second run makes its own
        call = GuestCall()
        preopen = (Preopen(tmp_path, "/out", writable=True),)
        result = host.run(guest, ["write", "/out/new.txt"], call=call, preopens=preopen)
        assert result.stdout == b"write-ok\n"
        assert (tmp_path / "new.txt").read_text() == "written by a guest\n"
        assert call.wasi_fd_write is not None
