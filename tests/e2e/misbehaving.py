"""Small backends that misbehave on purpose, for the hostile-input and failure tests.

Each one is a plain ``socket`` server on 127.0.0.1 (port 0) with an accept
thread and one thread per connection, used as a context manager::

    with RecordingBackend() as backend:
        ... backend.address ...

- :class:`RecordingBackend` keeps every raw byte it receives, per connection,
  parses the requests strictly (so that a test can check the framing the
  gateway wrote) and answers each with a fixed, valid ``Content-Length``
  response.
- :class:`HangingBackend` accepts and reads, never answers.
- :class:`ResettingBackend` sends part of a response, then a TCP RST
  (``SO_LINGER`` 0); paths under ``ok_prefix`` get a complete response.
- :class:`ResetBeforeResponseBackend` reads the request (or nothing at all),
  then resets: the gateway sees the connection fail before any response byte.
- :class:`GarbageBackend` answers bytes that are not a valid HTTP response.
- :class:`SlowBackend` waits (noticing if the gateway gives up), then answers a byte at a time.
- :func:`full_backlog_listener`: a listening socket whose accept queue is
  full, so that new connections to it hang (a connect timeout on loopback).

Bounds: every server stops accepting after ``lifetime`` seconds or
``max_connections`` connections, every socket read has a timeout, and leaving
the ``with`` block closes the listener and every connection and joins the
threads (with a timeout).
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

HOST = "127.0.0.1"


def reset_socket(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST instead of a FIN (SO_LINGER on, 0 s)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


@dataclass
class ConnectionRecord:
    """One accepted connection: what arrived on it, and how it ended."""

    index: int
    opened_at: float
    data: bytearray = field(default_factory=bytearray)
    closed_by_peer: threading.Event = field(default_factory=threading.Event)  # EOF or RST from the gateway
    reset_by_peer: bool = False
    closed_at: float | None = None


class MisbehavingBackend:
    """Base class: the listener, the threads, the per-connection records.

    Subclasses implement :meth:`serve` for one connection; they read through
    :meth:`recv`, which records what arrives and notices the peer closing.
    """

    def __init__(self, max_connections: int = 500, lifetime: float = 120.0, io_timeout: float = 30.0) -> None:
        self.max_connections = max_connections
        self.lifetime = lifetime
        self.io_timeout = io_timeout
        self.connections: list[ConnectionRecord] = []
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self._listener = socket.create_server((HOST, 0), backlog=128)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"{type(self).__name__}-accept")

    # -- public ------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def accepted(self) -> int:
        with self.lock:
            return len(self.connections)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def received(self) -> bytes:
        """Everything received so far, all connections in accept order."""
        with self.lock:
            return b"".join(bytes(record.data) for record in self.connections)

    def total_received(self) -> int:
        with self.lock:
            return sum(len(record.data) for record in self.connections)

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> bool:
        return _wait(lambda: self.accepted >= count, timeout)

    def wait_for_close(self, index: int, timeout: float = 5.0) -> bool:
        """Wait until the gateway closed (or reset) connection ``index``."""
        if not _wait(lambda: self.accepted > index, timeout):
            return False
        return self.connections[index].closed_by_peer.wait(timeout)

    def __enter__(self) -> MisbehavingBackend:
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._acceptor.join(timeout=5)
        with self.lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self._threads):
            thread.join(timeout=5)
        for sock in sockets:
            try:
                sock.close()
            except OSError:
                pass

    # -- for subclasses --------------------------------------------------------------

    def serve(self, record: ConnectionRecord, sock: socket.socket) -> None:
        raise NotImplementedError

    def recv(self, record: ConnectionRecord, sock: socket.socket, size: int = 65536) -> bytes:
        """One read; b"" when the peer closed or reset (the record says so), or when stopping.

        Reads wake up every 0.2 s to notice a stop; ``io_timeout`` bounds the
        wait for one piece of data.
        """
        deadline = time.monotonic() + self.io_timeout
        while not self._stop.is_set():
            try:
                piece = sock.recv(size)
            except (TimeoutError, socket.timeout):
                if time.monotonic() >= deadline:
                    return b""
                continue
            except ConnectionResetError:
                record.reset_by_peer = True
                self._peer_closed(record)
                return b""
            except OSError:
                self._peer_closed(record)
                return b""
            if not piece:
                self._peer_closed(record)
                return b""
            with self.lock:
                record.data += piece
            return piece
        return b""

    def drain_until_closed(self, record: ConnectionRecord, sock: socket.socket) -> None:
        """Keep reading (and recording) until the peer closes, a stop, or io_timeout of silence."""
        for _ in range(100_000):
            if not self.recv(record, sock):
                return

    def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; False when stopped."""
        return not self._stop.wait(seconds)

    def wait_watching(self, record: ConnectionRecord, sock: socket.socket, seconds: float) -> bool:
        """Wait ``seconds`` while recording what arrives; False when the peer closed or we stop."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            readable, _, _ = select.select([sock], [], [], min(0.1, remaining))
            if not readable:
                continue
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                record.reset_by_peer = True
                piece = b""
            except (TimeoutError, socket.timeout):
                continue
            if not piece:
                self._peer_closed(record)
                return False
            with self.lock:
                record.data += piece
        return False

    # -- internals -------------------------------------------------------------------

    def _peer_closed(self, record: ConnectionRecord) -> None:
        if not record.closed_by_peer.is_set():
            record.closed_at = time.monotonic()
            record.closed_by_peer.set()

    def _accept_loop(self) -> None:
        deadline = time.monotonic() + self.lifetime
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.accepted >= self.max_connections:
                return
            try:
                sock, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            sock.settimeout(0.2)
            with self.lock:
                record = ConnectionRecord(index=len(self.connections), opened_at=time.monotonic())
                self.connections.append(record)
                self._sockets.append(sock)
            thread = threading.Thread(target=self._run, args=(record, sock), daemon=True,
                                      name=f"{type(self).__name__}-{record.index}")
            self._threads.append(thread)
            thread.start()

    def _run(self, record: ConnectionRecord, sock: socket.socket) -> None:
        try:
            self.serve(record, sock)
        except OSError:
            pass  # the gateway went away mid-write: that is its right
        except Exception as error:  # noqa: BLE001  (kept for the test to see)
            self.errors.append(error)
        finally:
            try:
                sock.close()
            except OSError:
                pass


def _wait(condition, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# -- strict request parsing (what a backend reads) ------------------------------------------

class FramingProblem(Exception):
    """The bytes a backend received are not one unambiguous HTTP/1.1 request."""


@dataclass
class RecordedRequest:
    """One request as the recording backend parsed it from the raw bytes."""

    connection: int
    seq: int
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "content-length", "chunked" or "none"
    chunk_sizes: list[int]  # for chunked bodies: the sizes the gateway wrote, the final 0 included
    raw: bytes  # the exact bytes of this request on the wire

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def parse_request(buffer: bytes | bytearray) -> tuple[dict, int] | None:
    """Parse one request from the start of ``buffer`` strictly (RFC 9112).

    Returns (fields, bytes used), None when more bytes are needed; raises
    FramingProblem for anything a strict backend would refuse or could read
    two ways: bare LF, obs-fold, bad field names or values, both or several
    framing headers, a Transfer-Encoding other than ``chunked``, chunk
    extensions or trailers (the gateway writes neither).
    """
    end = bytes(buffer[:65536 + 4]).find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > 65536:
            raise FramingProblem("request head larger than 64 KiB")
        return None
    head = bytes(buffer[:end])
    if b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
        raise FramingProblem(f"bare CR or LF in the head: {head[:200]!r}")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise FramingProblem(f"bad request line {lines[0][:200]!r}")
    method, target, version = (part.decode("latin-1") for part in parts)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise FramingProblem(f"obs-fold line {line[:200]!r}")
        name, colon, value = line.partition(b":")
        if not colon or not name or any(byte not in _TOKEN_CHARS for byte in name):
            raise FramingProblem(f"bad header line {line[:200]!r}")
        if any(byte < 0x20 and byte != 0x09 or byte == 0x7F for byte in value):
            raise FramingProblem(f"control character in header value {line[:200]!r}")
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    lengths = [value for key, value in headers if key.lower() == "content-length"]
    codings = [value for key, value in headers if key.lower() == "transfer-encoding"]
    position = end + 4
    body = b""
    chunk_sizes: list[int] = []
    if lengths and codings:
        raise FramingProblem("both Content-Length and Transfer-Encoding")
    if len(lengths) > 1 or len(codings) > 1:
        raise FramingProblem(f"repeated framing header: {lengths or codings}")
    if codings:
        if codings[0] != "chunked":
            raise FramingProblem(f"Transfer-Encoding {codings[0]!r}")
        framing = "chunked"
        chunks = bytearray()
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                if len(buffer) - position > 64:
                    raise FramingProblem("chunk-size line too long")
                return None
            size_text = bytes(buffer[position:line_end])
            if not size_text or len(size_text) > 16 or any(byte not in _HEX for byte in size_text):
                raise FramingProblem(f"bad chunk-size line {size_text[:64]!r}")
            size = int(size_text, 16)
            chunk_sizes.append(size)
            position = line_end + 2
            if size == 0:
                if len(buffer) < position + 2:
                    return None
                if bytes(buffer[position:position + 2]) != b"\r\n":
                    raise FramingProblem("trailer fields after the last chunk")
                position += 2
                break
            if len(buffer) < position + size + 2:
                return None
            chunks += buffer[position:position + size]
            if bytes(buffer[position + size:position + size + 2]) != b"\r\n":
                raise FramingProblem("chunk data not followed by CRLF")
            position += size + 2
        body = bytes(chunks)
    elif lengths:
        if not lengths[0].isdigit():
            raise FramingProblem(f"Content-Length {lengths[0]!r}")
        framing = "content-length"
        length = int(lengths[0])
        if len(buffer) < position + length:
            return None
        body = bytes(buffer[position:position + length])
        position += length
    else:
        framing = "none"
    fields = dict(method=method, target=target, version=version, headers=headers, body=body,
                  framing=framing, chunk_sizes=chunk_sizes, raw=bytes(buffer[:position]))
    return fields, position


# -- the backends ------------------------------------------------------------------------------

class RecordingBackend(MisbehavingBackend):
    """Records every byte, parses requests strictly, answers each with a fixed response.

    The response is ``status`` with ``Content-Length`` and the body
    ``ok <target>`` (so that tests can check order), plus
    ``X-Recorded: <seq>``.  A request that does not parse strictly is put in
    ``problems`` and the connection is closed.
    """

    def __init__(self, status: str = "200 OK", **kwargs) -> None:
        super().__init__(**kwargs)
        self.status = status
        self.requests: list[RecordedRequest] = []
        self.problems: list[tuple[int, str, bytes]] = []  # (connection, problem, bytes)

    def snapshot(self) -> tuple[int, int]:
        """(requests so far, bytes so far): compare with :meth:`since`."""
        with self.lock:
            return len(self.requests), sum(len(record.data) for record in self.connections)

    def since(self, snapshot: tuple[int, int]) -> tuple[list[RecordedRequest], int]:
        """The requests, and the number of bytes, received after ``snapshot``."""
        with self.lock:
            return (list(self.requests[snapshot[0]:]),
                    sum(len(record.data) for record in self.connections) - snapshot[1])

    def targets(self) -> list[str]:
        with self.lock:
            return [request.target for request in self.requests]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        return _wait(lambda: len(self.requests) >= count, timeout)

    def serve(self, record: ConnectionRecord, sock: socket.socket) -> None:
        buffer = bytearray()
        for _ in range(100_000):
            try:
                parsed = parse_request(buffer)
            except FramingProblem as problem:
                with self.lock:
                    self.problems.append((record.index, str(problem), bytes(buffer[:2000])))
                reset_socket(sock)
                return
            if parsed is None:
                piece = self.recv(record, sock)
                if not piece:
                    return
                buffer += piece
                continue
            fields, used = parsed
            del buffer[:used]
            with self.lock:
                request = RecordedRequest(connection=record.index, seq=len(self.requests), **fields)
                self.requests.append(request)
            body = b"ok " + request.target.encode("latin-1")
            sock.sendall(b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                         b"X-Recorded: %d\r\n\r\n%s" % (self.status.encode(), len(body), request.seq, body))
            if (request.header("Connection") or "").lower() == "close":
                return


class HangingBackend(MisbehavingBackend):
    """Accepts and reads (recording everything), never answers."""

    def serve(self, record: ConnectionRecord, sock: socket.socket) -> None:
        self.drain_until_closed(record, sock)


def _read_head(backend: MisbehavingBackend, record: ConnectionRecord, sock: socket.socket,
               buffer: bytearray) -> bytes | None:
    """Read through the end of a request head (and its Content-Length body, if any); None at EOF."""
    for _ in range(10_000):
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buffer[:end + 4])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and value.strip().isdigit():
                    length = int(value.strip())
            while len(buffer) < end + 4 + length:
                piece = backend.recv(record, sock)
                if not piece:
                    return None
                buffer += piece
            del buffer[:end + 4 + length]
            return head
        piece = backend.recv(record, sock)
        if not piece:
            return None
        buffer += piece
    return None


def _target_of(head: bytes) -> str:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    return parts[1].decode("latin-1") if len(parts) > 1 else ""


class ResettingBackend(MisbehavingBackend):
    """Answers part of a response, waits ``delay``, then resets the connection.

    The response announces ``declared_length`` bytes and sends
    ``partial_bytes`` of them.  Requests whose target starts with
    ``ok_prefix`` get a complete response instead (keep-alive).
    """

    def __init__(self, declared_length: int = 100_000, partial_bytes: int = 1000, delay: float = 0.3,
                 ok_prefix: str = "/ok", **kwargs) -> None:
        super().__init__(**kwargs)
        self.declared_length = declared_length
        self.partial_bytes = partial_bytes
        self.delay = delay
        self.ok_prefix = ok_prefix
        self.resets = 0
        self.completed = 0

    def serve(self, record: ConnectionRecord, sock: socket.socket) -> None:
        buffer = bytearray()
        for _ in range(10_000):
            head = _read_head(self, record, sock, buffer)
            if head is None:
                return
            target = _target_of(head)
            if target.startswith(self.ok_prefix):
                body = b"complete " + target.encode("latin-1")
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                with self.lock:
                    self.completed += 1
                continue
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % self.declared_length + b"x" * self.partial_bytes)
            self.sleep(self.delay)
            with self.lock:
                self.resets += 1
            reset_socket(sock)
            return


class ResetBeforeResponseBackend(MisbehavingBackend):
    """Resets every connection before any response byte.

    With ``read_request`` (the default) it first reads the request head and
    its Content-Length body (so the backend has "seen" the request: the
    targets are in ``seen``); without, it resets right after accept().
    """

    def __init__(self, read_request: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.read_request = read_request
        self.seen: list[str] = []

    def serve(self, record: ConnectionRecord, sock: socket.socket) -> None:
        if self.read_request:
            head = _read_head(self, record, sock, bytearray())
            if head is None:
                return
            with self.lock:
                self.seen.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
        reset_socket(sock)


class GarbageBackend(MisbehavingBackend):
    """Reads a request head, answers ``payload`` (not valid HTTP), then closes."""

    def __init__(self, payload: bytes = b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 not http\r\n\r\n",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.payload = payload

    def serve(self, record: ConnectionRecord, sock: socket.socket) -> None:
        if _read_head(self, record, sock, bytearray()) is None:
            return
        sock.sendall(self.payload)
        self.sleep(0.2)


class SlowBackend(MisbehavingBackend):
    """Waits ``delay`` before answering, then sends the response ``byte_interval`` apart per byte of body.

    The response head goes out at once after the delay; the body
    (``body``, Content-Length) trickles.  Closes after each response.
    """

    def __init__(self, delay: float = 0.0, byte_interval: float = 0.0, body: bytes = b"slow body",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay = delay
        self.byte_interval = byte_interval
        self.body = body
        self.finished = 0

    def serve(self, record: ConnectionRecord, sock: socket.socket) -> None:
        if _read_head(self, record, sock, bytearray()) is None:
            return
        if not self.wait_watching(record, sock, self.delay):
            return
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % len(self.body))
        for index in range(len(self.body)):
            sock.sendall(self.body[index:index + 1])
            if self.byte_interval and not self.sleep(self.byte_interval):
                return
        with self.lock:
            self.finished += 1
        self.sleep(0.1)


@contextmanager
def full_backlog_listener(max_fill: int = 16, probe_timeout: float = 0.5) -> Iterator[str | None]:
    """A listening socket that never accepts, its accept queue filled by our own connections.

    Linux drops the SYNs of further connections while the accept queue is
    full, so a new connection to it neither succeeds nor is refused: it hangs
    until the connecting side gives up (a connect timeout, on loopback).
    Yields the address, or None when this kernel did not behave so (the
    caller skips).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers: list[socket.socket] = []
    hanging = False
    try:
        for _ in range(max_fill):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.settimeout(probe_timeout)
            try:
                probe.connect(address)
            except (TimeoutError, socket.timeout):
                probe.close()
                hanging = True
                break
            except OSError:
                probe.close()
                break
            fillers.append(probe)
        yield f"{address[0]}:{address[1]}" if hanging else None
    finally:
        for sock in fillers:
            sock.close()
        listener.close()
