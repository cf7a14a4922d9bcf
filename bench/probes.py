"""Small blocking HTTP clients: idle keep-alive connections, timed requests, checks.

Plain sockets and a minimal response reader (Content-Length bodies only,
which is all the upstreams send for these paths), so that 10,000 idle
connections cost the benchmark little memory and nothing is hidden.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections import Counter

from stack import HOST

IO_TIMEOUT = 5.0


class ProbeError(RuntimeError):
    pass


def request_bytes(path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def exchange(sock: socket.socket, path: str = "/") -> tuple[int, bytes]:
    """Send one keep-alive GET and read the whole answer: (status, head)."""
    sock.sendall(request_bytes(path))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ProbeError("connection closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    remaining = (int(length.group(1)) if length else 0) - len(body)
    while remaining > 0:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            raise ProbeError("connection closed in the response body")
        remaining -= len(chunk)
    return int(head.split(None, 2)[1]), head


def open_idle_connections(port: int, count: int, deadline: float) -> list[socket.socket]:
    """*count* connections, each after one request and response, left open and idle."""
    connections: list[socket.socket] = []
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                raise ProbeError(f"only {len(connections)} of {count} connections opened in time")
            sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
            connections.append(sock)
            status, _ = exchange(sock)
            if status != 200:
                raise ProbeError(f"status {status} while opening idle connections")
    except BaseException:
        close_all(connections)
        raise
    return connections


def close_all(connections: list[socket.socket]) -> None:
    for sock in connections:
        sock.close()
    connections.clear()


def still_usable(connections: list[socket.socket], sample: int) -> tuple[int, int]:
    """(usable, tried): another request on *sample* of the idle connections, evenly spread."""
    step = max(1, len(connections) // sample)
    tried = connections[::step][:sample]
    usable = 0
    for sock in tried:
        try:
            usable += exchange(sock)[0] == 200
        except (OSError, ProbeError):
            pass
    return usable, len(tried)


def timed_new_request(port: int) -> float:
    """Milliseconds from connect() to the end of the response, on a new connection."""
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=IO_TIMEOUT) as sock:
        status, _ = exchange(sock)
    elapsed = (time.perf_counter() - started) * 1000
    if status != 200:
        raise ProbeError(f"status {status}")
    return elapsed


def tls_resumption(port: int, connections: int = 21) -> str:
    """The TLS version a default client gets, and how many of its reconnections resumed the session before.

    wrk reconnects the same way (it keeps the session of its last connection),
    so "0/20 resumed" means every new connection of tls-newconn paid a full
    handshake.  With several workers, each connection lands on any of them.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    session, resumed, version = None, 0, "?"
    for _ in range(connections):
        with socket.create_connection((HOST, port), timeout=IO_TIMEOUT) as raw:
            with context.wrap_socket(raw, session=session) as sock:
                exchange(sock)  # a TLS 1.3 session ticket arrives after the handshake
                session, version = sock.session, sock.version()
                resumed += sock.session_reused
    return f"{version}, {resumed}/{connections - 1} resumed"


def upstream_split(port: int, requests: int = 8) -> str:
    """Which upstream answered each of *requests* keep-alive GETs, counted: "a:6 b:2"."""
    counts: Counter[str] = Counter()
    with socket.create_connection((HOST, port), timeout=IO_TIMEOUT) as sock:
        for _ in range(requests):
            _, head = exchange(sock)
            served = re.search(rb"(?im)^x-(?:upstream|served-by):\s*(\S+)", head)
            counts[served.group(1).decode() if served else "?"] += 1
    return " ".join(f"{name}:{count}" for name, count in sorted(counts.items()))
