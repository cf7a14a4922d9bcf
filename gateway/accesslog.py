"""Writes access log lines to standard output or a file, off the request's critical path.

Lines go into a buffered file object and are flushed twice a second and at
shutdown, so a request costs a memory append rather than a write system call.
"""

from __future__ import annotations

import io
import os
import sys

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from gateway.core.accesslog import AccessLogFormatter, AccessRecord

FLUSH_INTERVAL = 0.5


class AccessLogWriter(Service):
    """The ``access_log`` target: ``"-"`` for standard output, otherwise a file path."""

    def __init__(self, target: str, clock) -> None:
        self._target = target
        self._clock = clock
        self._formatter = AccessLogFormatter()
        self._stream: io.TextIOBase | None = None
        self._flusher: LoopingCall | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self._target == "-":
            # twistd replaces sys.stdout with a logger; the access log wants the real one.
            self._stream = io.TextIOWrapper(io.FileIO(os.dup(sys.__stdout__.fileno()), "w"),
                                            encoding="utf-8", errors="replace", write_through=False)
        else:
            directory = os.path.dirname(self._target)
            if directory:
                os.makedirs(directory, exist_ok=True)
            self._stream = open(self._target, "a", encoding="utf-8", errors="replace", buffering=65536)

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

    def write(self, record: AccessRecord, finished: float) -> None:
        if self._stream is not None:
            self._stream.write(self._formatter.format(record, finished))

    def flush(self) -> None:
        if self._stream is not None:
            try:
                self._stream.flush()
            except OSError:
                pass  # a closed pipe or full disk must not take the gateway down
