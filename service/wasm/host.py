"""The wasm host: one Engine, guests compiled once, a fresh Store for every run.

Shared and built once: the Engine (epoch interruption on), the Linker holding WASI and
every host ABI, and each guest's InstancePre. Compiled guests are cached on disk as
serialized modules keyed by the wasm's sha256 and the engine's settings, and loaded with
`Module.deserialize_file` (an mmap, ~0.1 ms, against ~0.5 s to compile). Per run: a new
Store with memory limits and an epoch deadline, WASI with only the args, environment and
read-only directories the host passes, and stdout/stderr captured in memory (by the
host's own fd_write, wasi_output.py). Nothing
survives from one run to the next.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import wasmtime

from ..errors import ClassifierError, ErrorKind
from ..files import write_atomically
from . import image, legacy_image, tensorflow, tensorflowlite, wasi_nn, wasi_output, wasi_poll
from .call import GuestCall, running
from .wasmtime_capi import instance_export, set_argv, set_stdin_bytes

WASM_MAGIC = b"\0asm"
NOT_WASM = "not a valid wasm module: it does not start with \\0asm (give a .wasm file built for wasm32-wasi)"
EPOCH_TICK_S = 0.01  # 5-10 ms ticks cost nothing measurable and keep deadlines accurate


@dataclass(frozen=True)
class Preopen:
    """A host directory the guest sees at `guest_path`, read-only unless `writable`."""

    host_path: Path
    guest_path: str
    writable: bool = False


@dataclass(frozen=True)
class Guest:
    """A compiled guest, ready to instantiate."""

    name: str
    digest: str
    pre: wasmtime.InstancePre


@dataclass
class GuestResult:
    exit_code: int | None  # None when the guest trapped
    stdout: bytes
    stderr: bytes
    trap: str | None = None
    trap_reason: str | None = None  # the trap's kind (wasmtime's TrapCode, lower case), for metrics
    deadline_exceeded: bool = False
    output_overflow: bool = False
    elapsed_s: float = 0.0
    memory_bytes: int = 0  # the guest's linear memory when the run ended
    call: GuestCall = field(default_factory=GuestCall)


class _CappedOutput:
    """A WASI stdout/stderr sink that keeps at most `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False

    def __call__(self, data: bytes) -> int:
        room = self.limit - self.size
        if len(data) > room:
            self.overflow = True
            data = data[: max(room, 0)]
        self.chunks.append(data)
        self.size += len(data)
        return len(data) if not self.overflow else -1

    def value(self) -> bytes:
        return b"".join(self.chunks)


# Every host ABI a guest may import, defined on the shared Linker after WASI (wasi_poll
# replaces WASI's poll_oneoff: sleeps bounded by the deadline; wasi_output its fd_write:
# captured output written by the host).
HOST_MODULES = (wasi_poll, wasi_output, wasi_nn, image, legacy_image, tensorflowlite, tensorflow)


class _EpochTicker:
    """Advances the engine's epoch every tick, so deadlines fire while wasm runs
    (wasm execution releases the GIL; signals cannot interrupt it)."""

    def __init__(self, engine: wasmtime.Engine, tick_s: float) -> None:
        self._engine = engine
        self._tick_s = tick_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="epoch-ticker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Count ticks from the clock, not from wake-ups: on a loaded machine this thread
        # wakes late, and one increment per wake-up would stretch every deadline.
        started = time.monotonic()
        ticks = 0
        while not self._stop.wait(self._tick_s):
            due = int((time.monotonic() - started) / self._tick_s)
            while ticks < due:
                self._engine.increment_epoch()
                ticks += 1

    def stop(self) -> None:
        self._stop.set()


# What engine_config sets, in the compiled-guest cache's key: compiled code is only valid for
# the wasmtime build and the settings it was compiled with.
ENGINE_SETTINGS = "epoch; opt=speed; memory_may_move=off"


def engine_config() -> wasmtime.Config:
    """The Engine's settings: deadlines by epoch, code optimised for speed, and memories that stay
    where they are when they grow (32-bit memories fit the default reservation), so a run maps
    its guest's memory once for all its host calls (memory.py)."""
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.cranelift_opt_level = "speed"
    config.memory_may_move = False
    return config


class WasmHost:
    """Owns the Engine, the Linker with every host ABI, and the compiled guests."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.engine = wasmtime.Engine(engine_config())
        self.fingerprint = hashlib.sha256(
            f"wasmtime-py {version('wasmtime')}; {ENGINE_SETTINGS}".encode()
        ).hexdigest()[:16]
        self.cache_dir = cache_dir
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()
        for host_module in HOST_MODULES:
            host_module.define(self.linker)
        self._guests: dict[str, Guest] = {}
        self._lock = threading.Lock()
        self._latest_deadline = 0.0  # of every run so far: how far interrupt() must move the epoch
        self._ticker = _EpochTicker(self.engine, EPOCH_TICK_S)

    def interrupt(self) -> None:
        """Make every run on this host pass its deadline now (Ctrl-C on the command line): the
        engine's epoch, which other threads may advance, moved past the latest deadline."""
        with self._lock:
            ticks = math.ceil(max(self._latest_deadline - time.monotonic(), 0.0) / EPOCH_TICK_S) + 2
        for _ in range(ticks):
            self.engine.increment_epoch()

    def close(self) -> None:
        self._ticker.stop()

    # -- guests ---------------------------------------------------------------------------

    def load_guest(self, wasm: bytes, name: str = "guest") -> Guest:
        """Compile (or fetch from the caches) and link a guest module."""
        digest = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            guest = self._guests.get(digest)
        if guest is not None:
            return guest
        module = self._module(wasm, digest)
        try:
            pre = self.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise ClassifierError(
                ErrorKind.INVALID_ARGUMENT, f"guest {name!r} cannot be linked: {_first_line(exc)}"
            ) from exc
        guest = Guest(name=name, digest=digest, pre=pre)
        with self._lock:
            return self._guests.setdefault(digest, guest)

    def load_guest_file(self, path: Path) -> Guest:
        try:
            wasm = Path(path).read_bytes()
        except OSError as exc:
            raise ClassifierError(ErrorKind.NOT_FOUND, f"cannot read guest {path}: {exc.strerror}") from exc
        try:
            return self.load_guest(wasm, Path(path).name)
        except ClassifierError as exc:
            raise ClassifierError(exc.kind, f"the guest {path}: {exc.message}") from exc

    def _module(self, wasm: bytes, digest: str) -> wasmtime.Module:
        cached = self.cache_dir / f"{digest}-{self.fingerprint}.cwasm" if self.cache_dir else None
        if cached is not None and cached.exists():
            try:
                return wasmtime.Module.deserialize_file(self.engine, str(cached))
            except wasmtime.WasmtimeError:
                cached.unlink(missing_ok=True)  # stale or corrupt: compile again
        if not wasm.startswith(WASM_MAGIC):  # else wasmtime reads it as WAT text: a puzzling error
            raise ClassifierError(ErrorKind.INVALID_ARGUMENT, NOT_WASM)
        try:
            module = wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise ClassifierError(
                ErrorKind.INVALID_ARGUMENT, f"not a valid wasm module: {_first_line(exc)}"
            ) from exc
        if cached is not None:
            write_atomically(cached, bytes(module.serialize()))
        return module

    # -- runs -----------------------------------------------------------------------------

    def run(
        self,
        guest: Guest,
        args: Sequence[str],
        *,
        call: GuestCall,
        stdin: bytes = b"",
        preopens: Iterable[Preopen] = (),
        env: Iterable[tuple[str, str]] = (),
        inherit_stdio: bool = False,
    ) -> GuestResult:
        """Run a WASI command guest to completion in a fresh Store."""
        started = time.perf_counter()
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=call.limits.memory_bytes)
        time_left = max(call.deadline - time.monotonic(), 0.0)
        store.set_epoch_deadline(math.ceil(time_left / EPOCH_TICK_S) + 1)
        with self._lock:
            self._latest_deadline = max(self._latest_deadline, call.deadline)

        wasi = wasmtime.WasiConfig()
        set_argv(wasi, (guest.name, *args))
        environment = list(env)
        if environment:  # WASI's default environment is empty
            wasi.env = environment
        for preopen in preopens:
            wasi.preopen_dir(str(preopen.host_path), preopen.guest_path, preopen.writable)
        stdout = _CappedOutput(call.limits.output_bytes)
        stderr = _CappedOutput(call.limits.output_bytes)
        if inherit_stdio:
            wasi.inherit_stdin()
            wasi.inherit_stdout()
            wasi.inherit_stderr()
            call.stderr = _write_process_stderr
            call.output_sinks = {}
        else:
            set_stdin_bytes(wasi, stdin)
            call.output_sinks = {1: stdout, 2: stderr}  # wasi_output.fd_write writes them
            call.stderr = stderr

        exit_code: int | None = None
        trap: str | None = None
        trap_reason: str | None = None
        deadline_exceeded = False
        call.guest_memory = None  # of this run's Store only: another Store's Memory would abort wasmtime
        call.wasi_fd_write = None
        with running(call):
            try:
                store.set_wasi(wasi)
                instance = guest.pre.instantiate(store)
                memory = instance_export(store, instance, "memory")
                call.guest_memory = memory if isinstance(memory, wasmtime.Memory) else None
                start = instance_export(store, instance, "_start")
                if not isinstance(start, wasmtime.Func):
                    raise ClassifierError(
                        ErrorKind.INVALID_ARGUMENT, f"guest {guest.name!r} is not a WASI command (no _start)"
                    )
                start(store)
                exit_code = 0
            except wasmtime.ExitTrap as exc:
                exit_code = exc.code
            except wasmtime.Trap as exc:
                trap = _trap_message(exc)
                trap_reason = exc.trap_code.name.lower() if exc.trap_code is not None else "host"
                deadline_exceeded = exc.trap_code == wasmtime.TrapCode.INTERRUPT
            except wasmtime.WasmtimeError as exc:  # e.g. instantiation over the memory limit
                trap = _first_line(exc)
                trap_reason = "instantiation"
        return GuestResult(
            exit_code=exit_code,
            stdout=stdout.value(),
            stderr=stderr.value(),
            trap=trap,
            trap_reason=trap_reason,
            deadline_exceeded=deadline_exceeded or call.deadline_hit,
            output_overflow=stdout.overflow or stderr.overflow,
            elapsed_s=time.perf_counter() - started,
            memory_bytes=call.guest_memory.data_len(store) if call.guest_memory is not None else 0,
            call=call,
        )


def _write_process_stderr(data: bytes) -> None:
    sys.stderr.buffer.write(data)
    sys.stderr.flush()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _trap_message(trap: wasmtime.Trap) -> str:
    """What the trap was: wasmtime's message starts with a backtrace and ends with the cause."""
    text = str(trap).strip()
    if "Caused by:" in text:
        lines = text.split("Caused by:", 1)[1].splitlines()
        return "; ".join(re.sub(r"^\d+: ", "", line.strip()) for line in lines if line.strip())
    return _first_line(trap)
