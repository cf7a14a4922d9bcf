"""The access log line: nginx's "combined" format plus upstream and timings.

``127.0.0.1 - - [27/Nov/2026:20:13:04 +0000] "GET /api/users HTTP/1.1" 200 512 "-" "curl/8.5.0" upstream=127.0.0.1:9001 request_time=0.004 upstream_time=0.003``
"""

from __future__ import annotations

import time
from dataclasses import dataclass

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(slots=True)
class AccessRecord:
    """What one request leaves behind for the log."""

    client_ip: str
    started: float
    request_line: str
    status: int = 0
    body_bytes: int = 0
    referer: str = "-"
    user_agent: str = "-"
    upstream: str = "-"
    upstream_time: float | None = None


class AccessLogFormatter:
    """Formats records; the timestamp text is cached per second."""

    def __init__(self) -> None:
        self._second = -1
        self._stamp = ""

    def timestamp(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            t = time.gmtime(second)
            self._second = second
            self._stamp = (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                           f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")
        return self._stamp

    def format(self, record: AccessRecord, finished: float) -> str:
        upstream_time = "-" if record.upstream_time is None else f"{record.upstream_time:.3f}"
        return (f'{record.client_ip} - - [{self.timestamp(record.started)}] "{_quote(record.request_line)}" '
                f'{record.status} {record.body_bytes} "{_quote(record.referer)}" "{_quote(record.user_agent)}" '
                f"upstream={record.upstream} request_time={finished - record.started:.3f} "
                f"upstream_time={upstream_time}\n")


def _quote(text: str) -> str:
    """Escape what would break the line's quoting (nginx escapes the same way)."""
    if '"' in text or "\\" in text or not text.isprintable():
        return "".join(c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02X}" for c in text)
    return text
