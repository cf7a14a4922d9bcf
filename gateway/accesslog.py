"""Writes access log lines to standard output or a file, off the request's critical path.

Lines are collected in memory and written twice a second and at shutdown,
so a request costs a list append rather than a write system call.  Each
write holds whole lines only and at most ``PIPE_BUF`` bytes (unless one line
is longer), and files are opened with ``O_APPEND``: with ``workers: N``
every worker writes to the same file or pipe, and their lines never
interleave mid-line.
"""

from __future__ import annotations

import os
import select
import sys

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from gateway.core.accesslog import AccessLogFormatter, AccessRecord

FLUSH_INTERVAL = 0.5
ATOMIC_WRITE = select.PIPE_BUF  # the largest write a pipe never splits


class AccessLogWriter(Service):
    """The ``access_log`` target: ``"-"`` for standard output, otherwise a file path."""

    def __init__(self, target: str, clock) -> None:
        self._target = target
        self._clock = clock
        self._formatter = AccessLogFormatter()
        self._fd: int | None = None
        self._lines: list[str] = []
        self._flusher: LoopingCall | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self._target == "-":
            # twistd replaces sys.stdout with a logger; the access log wants the real one.
            self._fd = os.dup(sys.__stdout__.fileno())
        else:
            directory = os.path.dirname(self._target)
            if directory:
                os.makedirs(directory, exist_ok=True)
            self._fd = os.open(self._target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def startService(self) -> None:
        super().startService()
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = self._clock
        self._flusher.start(FLUSH_INTERVAL, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, record: AccessRecord, finished: float) -> None:
        if self._fd is not None:
            self._lines.append(self._formatter.format(record, finished))

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if self._fd is None or not lines:
            return
        try:
            for chunk in whole_line_chunks(lines, ATOMIC_WRITE):
                while chunk:
                    chunk = chunk[os.write(self._fd, chunk):]
        except OSError:
            pass  # a closed pipe or full disk must not take the gateway down


def whole_line_chunks(lines: list[str], limit: int) -> list[bytes]:
    """*lines* encoded and joined into chunks of at most *limit* bytes, never splitting a line."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        data = line.encode("utf-8", "replace")
        if current and size + len(data) > limit:
            chunks.append(b"".join(current))
            current, size = [], 0
        current.append(data)
        size += len(data)
    if current:
        chunks.append(b"".join(current))
    return chunks
