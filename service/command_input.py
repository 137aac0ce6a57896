"""Reading the files named on the command line: a clear error for each way it fails, never a hang.

A regular file is read at once. A FIFO, a character device or a socket (`<(curl ...)`, a named pipe)
may have no writer yet, and opening or reading it would block for ever: it is opened without
blocking and read as data arrives (saying that it waits, when stderr is a terminal), until nothing
has come for INPUT_WAIT_S. Ctrl-C interrupts any of this (KeyboardInterrupt, exit 130 in service.cli).
"""

from __future__ import annotations

import os
import select
import stat
import sys
import time
from pathlib import Path

from .errors import ClassifierError, ErrorKind, invalid_argument, not_found
from .logs import say_waiting

INPUT_WAIT_S = 5.0  # the longest a pipe may stay silent (no writer, or a writer that sends nothing)
PROGRESS_AFTER_S = 1.0  # say that we are waiting once a pipe has been silent this long


def read_input(path: Path, what: str = "") -> bytes:
    """The bytes of the file at `path`; `what` (e.g. "--labels") prefixes the error."""
    label = f"{what} {path}" if what else str(path)
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise invalid_argument(f"cannot read {label}: it is a directory; give a file")
        if stat.S_ISREG(info.st_mode):
            return Path(path).read_bytes()
        return _read_stream(path, label)
    except FileNotFoundError:
        if os.path.islink(path):
            raise not_found(
                f"cannot read {label}: it is a symbolic link to {os.readlink(path)}, which does not exist"
            ) from None
        raise not_found(f"cannot read {label}: no such file") from None
    except PermissionError:
        raise not_found(
            f"cannot read {label}: permission denied (check the permissions of it and its directories)"
        ) from None
    except OSError as exc:
        raise not_found(f"cannot read {label}: {exc.strerror or exc}") from exc


def _read_stream(path: Path, label: str) -> bytes:
    """A pipe, device or socket, read until its writer closes it, or until it stays silent for
    INPUT_WAIT_S (a FIFO nobody writes to would otherwise block the open for ever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        chunks: list[bytes] = []
        silent_since = time.monotonic()
        said_waiting = False
        while True:
            events = poller.poll(200)
            if events:
                chunk = os.read(fd, 1 << 20)
                if not chunk:  # the writer came and went: that is all of it
                    return b"".join(chunks)
                chunks.append(chunk)
                silent_since = time.monotonic()
                continue
            silent_s = time.monotonic() - silent_since
            if silent_s >= INPUT_WAIT_S:
                raise ClassifierError(
                    ErrorKind.UNAVAILABLE,
                    f"cannot read {label}: nothing was written to it for {INPUT_WAIT_S:g} s "
                    "(a pipe with no writer?): start its writer first, or give a regular file",
                )
            if not said_waiting and silent_s >= PROGRESS_AFTER_S and sys.stderr.isatty():
                say_waiting(
                    f"classifier: waiting for data on {label} "
                    f"(a pipe; up to {INPUT_WAIT_S:g} s, Ctrl-C to stop)"
                )
                said_waiting = True
    finally:
        os.close(fd)
