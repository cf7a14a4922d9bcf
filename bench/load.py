"""Load generators: wrk (the real one) and a small Python fallback for smoke runs.

Both return a :class:`LoadResult`.  wrk runs pinned to the load CPU with a
hard time limit; its ``--latency`` output gives p50 and p99, and its error
lines (socket errors, non-2xx answers) are kept, because a proxy that answers
502 quickly must not look fast.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from stack import BIG_BYTES, HOST, LOAD_CPU

WRK_TIMEOUT = "10s"  # per request: a 10 MiB upload through a slow proxy can take seconds


@dataclass
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)  # "non2xx", "connect", "read", "write", "timeout"

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class Load:
    """What to send: the URL, how many connections, and how."""

    url: str
    connections: int
    new_connections: bool = False  # "Connection: close" on every request
    upload: bool = False  # POST a BIG_BYTES body


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def upload_script(workdir: Path) -> Path:
    path = workdir / "upload.lua"
    path.write_text(f'wrk.method = "POST"\n'
                    f'wrk.headers["Content-Type"] = "application/octet-stream"\n'
                    f'wrk.body = string.rep("x", {BIG_BYTES})\n')
    return path


def wrk_argv(load: Load, duration: int, workdir: Path, pin: bool) -> list[str]:
    argv = ["taskset", "-c", LOAD_CPU] if pin else []
    argv += ["wrk", "-t1", f"-c{load.connections}", f"-d{duration}s", "--latency", "--timeout", WRK_TIMEOUT]
    if load.new_connections:
        argv += ["-H", "Connection: close"]
    if load.upload:
        argv += ["-s", str(upload_script(workdir))]
    return argv + [load.url]


def run_wrk(load: Load, duration: int, workdir: Path, pin: bool) -> LoadResult:
    """One wrk run; raises RuntimeError if wrk fails or overruns its time."""
    argv = wrk_argv(load, duration, workdir, pin)
    # wrk stops by itself after -d; the sampler thread is running, so no preexec_fn here.
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        output, _ = popen.communicate(timeout=duration + 30)
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
    if popen.returncode != 0:
        last_lines = " / ".join(output.strip().splitlines()[-3:])
        raise RuntimeError(f"wrk failed ({popen.returncode}): {' '.join(argv)}: {last_lines}")
    return parse_wrk(output)


_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return float(number) * _TIME_UNITS[unit]


def parse_wrk(output: str) -> LoadResult:
    """The numbers from wrk's text output (wrk 4.x, with --latency)."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output)
    if total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    requests = int(total.group(1))
    seconds = _milliseconds(total.group(2) + total.group(3)) / 1000.0
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.MULTILINE))
    errors = {}
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        for name, value in zip(("connect", "read", "write", "timeout"), socket_errors.groups()):
            if int(value):
                errors[name] = int(value)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors["non2xx"] = int(non2xx.group(1))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    return LoadResult(
        requests=requests,
        seconds=seconds,
        rps=float(rps.group(1)) if rps else requests / seconds,
        p50_ms=_milliseconds(percentiles["50"]) if "50" in percentiles else None,
        p99_ms=_milliseconds(percentiles["99"]) if "99" in percentiles else None,
        errors=errors,
    )


# -- the Python fallback (smoke runs on machines without wrk) ---------------------

def run_python_load(load: Load, duration: float) -> LoadResult:
    """GET on keep-alive connections for *duration* seconds; much slower than wrk, for smoke runs only."""
    if load.new_connections or load.upload or not load.url.startswith("http://"):
        raise RuntimeError("without wrk only plain keep-alive GET scenarios can run (install wrk)")
    return asyncio.run(_python_load(load, duration))


async def _python_load(load: Load, duration: float) -> LoadResult:
    port, path = re.fullmatch(r"http://[^:/]+:(\d+)(/.*)", load.url).groups()
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    started = time.monotonic()
    deadline = started + duration
    await asyncio.gather(*(_python_connection(int(port), request, deadline, latencies, errors)
                           for _ in range(load.connections)))
    seconds = time.monotonic() - started
    latencies.sort()

    def percentile(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else None

    return LoadResult(len(latencies), seconds, len(latencies) / seconds, percentile(0.50), percentile(0.99), errors)


async def _python_connection(port: int, request: bytes, deadline: float, latencies: list[float],
                             errors: dict[str, int]) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
    except (OSError, asyncio.TimeoutError):
        errors["connect"] = errors.get("connect", 0) + 1
        return
    try:
        while time.monotonic() < deadline:
            sent = time.monotonic()
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            await asyncio.wait_for(reader.readexactly(int(length.group(1)) if length else 0), 10)
            latencies.append(time.monotonic() - sent)
            if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                errors["non2xx"] = errors.get("non2xx", 0) + 1
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        errors["read"] = errors.get("read", 0) + 1
    finally:
        writer.close()
