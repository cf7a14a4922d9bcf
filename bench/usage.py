"""A process's CPU time and memory, from /proc.

A proxy is measured with its descendants (nginx's master and worker), so its
RSS is the sum over that tree (nginx's master adds a few MB of mostly shared
pages).  :class:`Sampler` records CPU seconds over a run and samples RSS
every 100 ms to catch the peak.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def process_tree(pid: int) -> list[int]:
    """*pid* and all its descendants alive right now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of *pids* so far (utime and stime are fields 14 and 15 of stat)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class Sampler:
    """``with Sampler(pid) as s: ...``, then ``s.cpu``, ``s.rss_end``, ``s.rss_peak`` (bytes)."""

    def __init__(self, pid: int | None, interval: float = 0.1):
        self.pids = process_tree(pid) if pid else []
        self.interval = interval
        self.cpu = self.rss_end = self.rss_peak = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "Sampler":
        if self.pids:
            self._cpu_start = cpu_seconds(self.pids)
            self.rss_peak = rss_bytes(self.pids)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.pids:
            return
        self._stop.set()
        self._thread.join()
        self.cpu = cpu_seconds(self.pids) - self._cpu_start
        self.rss_end = rss_bytes(self.pids)
        self.rss_peak = max(self.rss_peak, self.rss_end)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.rss_peak = max(self.rss_peak, rss_bytes(self.pids))
