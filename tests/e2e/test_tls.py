"""TLS termination end to end: real handshakes on 127.0.0.1 against ``twistd -n gateway``.

Certificates are made with ``gateway.certs`` (what ``gateway certs generate``
runs) in temporary directories, and every client verifies them against the
generated ``ca.crt`` with Python's ``ssl`` (``create_default_context``:
CERT_REQUIRED and hostname checking).  The one place that checks a
certificate by an exact DER pin instead of its hostname (a name the
certificate is not for, which must fall back to the default certificate)
still verifies the chain against the CA.

Read-only tests share one gateway (``shared``) with three TLS listeners;
tests that change files, send signals or abuse the port get their own.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import simple_websocket
from cryptography import x509
from harness import (
    HOST,
    Gateway,
    certificate_der,
    free_port,
    gateway_config,
    make_certificates,
    pattern_bytes,
    request_on,
    run_gateway_expecting_failure,
    start_gateway,
    tls_client_context,
    tls_connect,
    tls_listener,
    wait_until,
)

from gateway.certs import (
    certificate_pem,
    generate_server_certificate,
    load_ca,
    private_key_pem,
)

IO_TIMEOUT = 5.0
HSTS_MAX_AGE = 600


# -- certificates and the shared gateway ------------------------------------------------

@dataclass
class CertSet:
    """gateway.crt (localhost, 127.0.0.1, ::1) and other.crt (other.test, *.wild.test), one CA."""

    directory: Path
    ca: Path
    gateway: tuple[Path, Path]
    other: tuple[Path, Path]


def make_cert_set(directory: Path) -> CertSet:
    gateway_pair = make_certificates(directory)
    other_pair = make_certificates(directory, name="other", hosts=("other.test", "*.wild.test"))
    return CertSet(directory, directory / "ca.crt", gateway_pair, other_pair)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return make_cert_set(tmp_path_factory.mktemp("certs"))


@dataclass
class Shared:
    gateway: Gateway
    certs: CertSet
    sni: int      # gateway.crt then other.crt, hsts
    plain: int    # gateway.crt only, no hsts
    tls13: int    # min_version 1.3


@pytest.fixture(scope="module")
def shared(backends, certs: CertSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """One gateway, three TLS listeners in front of web-1 (and api-1 under /api/)."""
    sni, plain, tls13 = free_port(), free_port(), free_port()
    config = gateway_config(sni, web=[backends.web1.address], api=[backends.api.address], listeners=[
        tls_listener(sni, [certs.gateway, certs.other], name="sni", hsts=HSTS_MAX_AGE),
        tls_listener(plain, [certs.gateway], name="plain"),
        tls_listener(tls13, [certs.gateway], name="tls13", min_version="1.3"),
    ])
    instance = start_gateway(config, tmp_path_factory.mktemp("gateway"))
    try:
        yield Shared(instance, certs, sni, plain, tls13)
    finally:
        instance.stop()


def get(sock: ssl.SSLSocket, path: str, host: str = "localhost", port: int | None = None):
    """GET on an open TLS socket with ``Host: host[:port]``."""
    return request_on(sock, "GET", path, headers={"Host": f"{host}:{port}" if port else host})


def fetch(port: int, cafile: Path, path: str = "/json", server_hostname: str = "localhost", **context):
    """A verified HTTPS GET on a fresh connection: (status, headers, body, peer DER)."""
    with tls_connect(port, tls_client_context(cafile, **context), server_hostname) as sock:
        status, headers, body = get(sock, path, server_hostname, port)
        return status, headers, body, sock.getpeercert(binary_form=True)


def sans(sock: ssl.SSLSocket) -> set[tuple[str, str]]:
    return set(sock.getpeercert()["subjectAltName"])


def assert_still_serves(port: int, cafile: Path) -> None:
    status, _, body, _ = fetch(port, cafile)
    assert status == 200, body


# -- HTTPS through to a backend ------------------------------------------------------------

@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_https_request_verified_reaches_backend_as_https(shared: Shared, server_hostname: str) -> None:
    context = tls_client_context(shared.certs.ca)
    with tls_connect(shared.sni, context, server_hostname) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        status, headers, body = get(sock, "/echo?x=1", server_hostname, shared.sni)
    assert status == 200, body
    echo = json.loads(body)
    assert echo["headers"]["x-forwarded-proto"] == "https"
    assert echo["scheme"] == "https"
    # Flask behind ProxyFix builds external URLs with the client-facing scheme and host.
    assert echo["url"] == f"https://{server_hostname}:{shared.sni}/echo"
    assert echo["headers"]["host"] == f"{server_hostname}:{shared.sni}"


def test_https_api_route_and_keep_alive(shared: Shared) -> None:
    with tls_connect(shared.plain, tls_client_context(shared.certs.ca)) as sock:
        for path in ("/api/users", "/json", "/api/users"):
            status, headers, body = get(sock, path, port=shared.plain)
            assert status == 200, body
            assert headers.get("X-Served-By"), path


def test_hsts_header_only_when_configured(shared: Shared) -> None:
    status, headers, body, _ = fetch(shared.sni, shared.certs.ca)
    assert status == 200, body
    assert headers.get_all("Strict-Transport-Security") == [f"max-age={HSTS_MAX_AGE}"]
    status, headers, body, _ = fetch(shared.plain, shared.certs.ca)
    assert status == 200, body
    assert headers.get("Strict-Transport-Security") is None


def test_negotiated_parameters_are_modern(shared: Shared) -> None:
    context = tls_client_context(shared.certs.ca, maximum=ssl.TLSVersion.TLSv1_2)
    with tls_connect(shared.plain, context) as sock:
        assert sock.version() == "TLSv1.2"
        name, _, _ = sock.cipher()
        assert name.startswith("ECDHE-"), name               # forward secret
        assert "GCM" in name or "CHACHA20" in name, name     # AEAD
        assert sock.compression() is None
    with tls_connect(shared.plain, tls_client_context(shared.certs.ca)) as sock:
        assert sock.version() == "TLSv1.3"  # the best both sides have


def test_cbc_only_client_is_refused(shared: Shared) -> None:
    context = tls_client_context(shared.certs.ca, maximum=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA")
    with pytest.raises(ssl.SSLError):
        tls_connect(shared.plain, context).close()
    assert_still_serves(shared.plain, shared.certs.ca)


@pytest.mark.parametrize("offered, expected", [
    (["h2", "http/1.1"], "http/1.1"),
    (["http/1.1"], "http/1.1"),
    (["h2"], None),       # no overlap: no ALPN answer, the handshake still completes
    (None, None),
])
def test_alpn(shared: Shared, offered: list[str] | None, expected: str | None) -> None:
    context = tls_client_context(shared.certs.ca, alpn=offered)
    with tls_connect(shared.sni, context) as sock:
        assert sock.selected_alpn_protocol() == expected
        status, _, body = get(sock, "/json", port=shared.sni)
        assert status == 200, body


def test_large_https_downloads_arrive_whole_to_slow_and_fast_readers(shared: Shared) -> None:
    """Bodies bigger than any buffer, over keep-alive TLS: a reader that stalls and a fast one at once.

    The gateway hands TLS records to the socket itself when Twisted's buffer is
    empty and leaves the rest to Twisted's buffer and backpressure; a mistake there
    shows as a reordered, cut or stuck body."""
    total = 6 * 1024 * 1024
    expected = pattern_bytes(total)
    context = tls_client_context(shared.certs.ca)
    results: dict[str, bytes] = {}

    def slow() -> None:
        with tls_connect(shared.plain, context) as sock:
            sock.sendall(f"GET /stream?bytes={total}&chunk=100000 HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            time.sleep(1.0)  # the gateway's and the kernel's buffers fill; the backend is paused
            response = http.client.HTTPResponse(sock)
            response.begin()
            results["slow"] = response.read()

    thread = threading.Thread(target=slow)
    thread.start()
    with tls_connect(shared.plain, context) as sock:
        for _ in range(2):  # twice on one connection: the framing after a large body is intact
            status, _, body = request_on(sock, "GET", f"/sized?bytes={total}", headers={"Host": "localhost"})
            assert status == 200
            assert body == expected
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert results["slow"] == expected


def test_large_https_upload_to_a_slow_backend_arrives_whole(shared: Shared) -> None:
    """A 16 MiB POST over TLS to a backend that sleeps before reading: held back, then whole."""
    body = os.urandom(16 * 1024 * 1024)
    with tls_connect(shared.plain, tls_client_context(shared.certs.ca), timeout=30) as sock:
        status, _, answer = request_on(sock, "POST", "/upload?delay=1", body=body, timeout=30,
                                       headers={"Host": "localhost", "Content-Type": "application/octet-stream"})
        assert status == 200, answer
        result = json.loads(answer)
        assert result["bytes"] == len(body)
        assert result["sha256"] == hashlib.sha256(body).hexdigest()
        status, _, _ = get(sock, "/json")  # the connection is still in step
        assert status == 200


def test_client_leaving_mid_download_does_not_disturb_others(shared: Shared) -> None:
    context = tls_client_context(shared.certs.ca)
    for _ in range(3):
        sock = tls_connect(shared.plain, context)
        sock.sendall(b"GET /stream?bytes=50000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.recv(65536)
        sock.close()  # no close_notify, mid-body
        assert_still_serves(shared.plain, shared.certs.ca)


def test_websocket_over_tls(shared: Shared, backends) -> None:
    ws = simple_websocket.Client.connect(f"wss://localhost:{shared.plain}/api/ws",
                                         ssl_context=tls_client_context(shared.certs.ca))
    try:
        for message in ("hello", "x" * 200_000):
            ws.send(message)
            answer = ws.receive(timeout=10)
            assert answer.startswith(f"api-1 {backends.api.address} ") and answer.endswith(f": {message}")
    finally:
        ws.close()
        # simple_websocket's reader thread can still write to its (closed) socket's file
        # descriptor; a connection the next test opens could get that number and those bytes.
        ws.thread.join(timeout=10)


# -- protocol versions ------------------------------------------------------------------------

def handshake_refused(port: int, context: ssl.SSLContext) -> ssl.SSLError:
    with pytest.raises(ssl.SSLError) as caught:
        tls_connect(port, context).close()
    return caught.value


def test_tls_1_2_accepted_by_default(shared: Shared) -> None:
    context = tls_client_context(shared.certs.ca, maximum=ssl.TLSVersion.TLSv1_2)
    with tls_connect(shared.plain, context) as sock:
        assert sock.version() == "TLSv1.2"
        assert get(sock, "/json", port=shared.plain)[0] == 200


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_1_client_refused(shared: Shared) -> None:
    context = tls_client_context(shared.certs.ca, minimum=ssl.TLSVersion.TLSv1,
                                 maximum=ssl.TLSVersion.TLSv1_1)
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 only offers TLS < 1.2 at level 0
    except ssl.SSLError:
        pytest.skip("the local OpenSSL cannot configure a TLS 1.1 client")
    try:
        tls_connect(shared.plain, context).close()
    except ssl.SSLError as error:
        if error.reason == "NO_PROTOCOLS_AVAILABLE":
            pytest.skip(f"the local OpenSSL refuses to offer TLS 1.1 at all: {error}")
        # The server refused the version (protocol_version alert, or no common version).
        assert error.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL",
                                "WRONG_VERSION_NUMBER"), error
    else:
        pytest.fail("a TLS 1.1 handshake succeeded")
    assert_still_serves(shared.plain, shared.certs.ca)


def test_min_version_1_3_refuses_tls_1_2_client(shared: Shared) -> None:
    error = handshake_refused(shared.tls13, tls_client_context(shared.certs.ca, maximum=ssl.TLSVersion.TLSv1_2))
    assert error.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL"), error
    with tls_connect(shared.tls13, tls_client_context(shared.certs.ca)) as sock:
        assert sock.version() == "TLSv1.3"
        assert get(sock, "/json", port=shared.tls13)[0] == 200


# -- session resumption -----------------------------------------------------------------------

@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_session_resumption(shared: Shared, version: ssl.TLSVersion) -> None:
    # One context for both connections: Python only resumes within a context.
    context = tls_client_context(shared.certs.ca, minimum=version, maximum=version)
    with tls_connect(shared.plain, context) as first:
        assert not first.session_reused
        # Reading a response also processes TLS 1.3's post-handshake session tickets.
        assert get(first, "/json", port=shared.plain)[0] == 200
        session = first.session
    assert session is not None
    for attempt in range(2):
        with tls_connect(shared.plain, context, session=session) as again:
            assert again.session_reused, f"attempt {attempt}: full handshake, session not resumed"
            assert get(again, "/json", port=shared.plain)[0] == 200
            session = again.session


# -- SNI --------------------------------------------------------------------------------------

@pytest.mark.parametrize("server_hostname", ["other.test", "x.wild.test", "X.Wild.Test", "Other.TEST"])
def test_sni_selects_matching_certificate(shared: Shared, server_hostname: str) -> None:
    with tls_connect(shared.sni, tls_client_context(shared.certs.ca), server_hostname) as sock:
        assert sock.getpeercert(binary_form=True) == certificate_der(shared.certs.other[0])
        assert sans(sock) == {("DNS", "other.test"), ("DNS", "*.wild.test")}
        status, _, body = get(sock, "/json", server_hostname, shared.sni)
        assert status == 200, body


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])  # an IP: no SNI sent at all
def test_no_sni_or_default_name_gets_first_certificate(shared: Shared, server_hostname: str) -> None:
    with tls_connect(shared.sni, tls_client_context(shared.certs.ca), server_hostname) as sock:
        assert sock.getpeercert(binary_form=True) == certificate_der(shared.certs.gateway[0])
        assert ("DNS", "localhost") in sans(sock) and ("IP Address", "127.0.0.1") in sans(sock)


@pytest.mark.parametrize("server_hostname", ["unknown.test", "wild.test", "a.b.wild.test", "other.test.evil"])
def test_unknown_sni_name_gets_first_certificate(shared: Shared, server_hostname: str) -> None:
    # Full verification: the chain is fine (the CA signed it), only the name is not the client's.
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        tls_connect(shared.sni, tls_client_context(shared.certs.ca), server_hostname).close()
    assert caught.value.verify_code == 62, caught.value  # X509_V_ERR_HOSTNAME_MISMATCH
    # Which certificate it was: chain still verified against the CA, identity by exact DER pin.
    pinned = tls_client_context(shared.certs.ca)
    pinned.check_hostname = False
    assert pinned.verify_mode == ssl.CERT_REQUIRED
    with tls_connect(shared.sni, pinned, server_hostname) as sock:
        assert sock.getpeercert(binary_form=True) == certificate_der(shared.certs.gateway[0])


# -- garbage on the TLS port ------------------------------------------------------------------

def client_hello(cafile: Path) -> bytes:
    """The bytes of a real ClientHello for localhost (nothing sent anywhere)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_client_context(cafile).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:16]
    return hello


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Read until the peer closes (True) or ``timeout`` passes (False)."""
    received = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            piece = sock.recv(65536)
        except (TimeoutError, socket.timeout):
            break
        except (ConnectionResetError, BrokenPipeError):
            return bytes(received), True
        if not piece:
            return bytes(received), True
        received += piece
    return bytes(received), False


class GoodClient(threading.Thread):
    """Verified HTTPS GETs on fresh connections, one after the other, until stopped (bounded)."""

    def __init__(self, port: int, cafile: Path, max_seconds: float = 60.0) -> None:
        super().__init__(name="good-https-client", daemon=True)
        self.port, self.cafile, self.max_seconds = port, cafile, max_seconds
        self.stopping = threading.Event()
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                status, _, _, _ = fetch(self.port, self.cafile)
            except Exception as error:  # noqa: BLE001 - reported by the test
                with self.lock:
                    self.errors.append(repr(error))
            else:
                with self.lock:
                    self.statuses.append(status)
            time.sleep(0.02)

    def count(self) -> int:
        with self.lock:
            return len(self.statuses)

    def wait_for_more(self, than: int, timeout: float = 10.0) -> None:
        wait_until(lambda: self.count() > than, timeout, message="the good client's next 200")


def test_garbage_on_tls_port_does_not_disturb_good_client(backends, gateway, tmp_path: Path) -> None:
    certs = make_cert_set(tmp_path / "certs")
    port = free_port()
    instance = gateway(gateway_config(port, web=[backends.web1.address],
                                      listeners=[tls_listener(port, [certs.gateway])]))
    hello = client_hello(certs.ca)
    rng = random.Random(1234)
    noise = bytes(rng.randrange(256) for _ in range(4096))
    noise = b"\x00" + noise[1:]  # never starts like a handshake record
    good = GoodClient(port, certs.ca)
    good.start()
    held: list[socket.socket] = []
    try:
        good.wait_for_more(0)
        # Each garbage connection is dropped by the gateway (closed), quickly.
        for label, data in [("plain HTTP", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
                            ("random bytes", noise),
                            ("a TLS record header with garbage", b"\x16\x03\x01\x00\x30" + b"\xff" * 48),
                            ("an SSLv2-looking hello", b"\x80\x2e\x01\x00\x02" + b"\x00" * 45)]:
            with socket.create_connection((HOST, port), timeout=IO_TIMEOUT) as sock:
                try:
                    sock.sendall(data)
                except (ConnectionResetError, BrokenPipeError):
                    continue  # already dropped
                received, closed = read_until_closed(sock, IO_TIMEOUT)
            assert closed, f"{label}: connection still open after {IO_TIMEOUT}s"
            assert not received.startswith(b"HTTP/"), f"{label}: got an HTTP answer {received[:80]!r}"
            before = good.count()
            good.wait_for_more(before)
        # Half-finished handshakes held open: half a ClientHello, and a whole one never followed up.
        for piece in (hello[: len(hello) // 2], hello, b"\x16\x03"):
            sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
            held.append(sock)
            sock.sendall(piece)
        before = good.count()
        hold_until = time.monotonic() + 2.0
        while time.monotonic() < hold_until:
            time.sleep(0.1)
        assert good.count() >= before + 3, "the good client stalled while handshakes were held open"
    finally:
        good.stopping.set()
        good.join(timeout=IO_TIMEOUT + 10)
        for sock in held:
            sock.close()
    assert not good.errors, good.errors[:5]
    assert good.statuses and set(good.statuses) == {200}, good.statuses
    assert instance.process.poll() is None, instance.output()
    for _ in range(3):
        assert_still_serves(port, certs.ca)


# -- start-up errors ---------------------------------------------------------------------------

def tls_config(port: int, web: str, certificates: list[tuple[Path, Path]], **tls) -> dict:
    return gateway_config(port, web=[web], listeners=[tls_listener(port, certificates, **tls)])


def assert_clear_failure(returncode: int, stdout: str, stderr: str, *mentions: Path) -> str:
    output = stdout + stderr
    assert returncode != 0, output
    assert "Traceback" not in output, output
    for path in mentions:
        assert str(path) in output, f"{path} not named in:\n{output}"
    return output


def test_key_not_matching_certificate_refused_at_start(backends, tmp_path: Path) -> None:
    certs = make_cert_set(tmp_path / "certs")
    cert, key = certs.gateway[0], certs.other[1]
    returncode, stdout, stderr = run_gateway_expecting_failure(
        tls_config(free_port(), backends.web1.address, [(cert, key)]), tmp_path)
    output = assert_clear_failure(returncode, stdout, stderr, cert, key)
    assert "does not match" in output, output


@pytest.mark.parametrize("missing", ["cert", "key"])
def test_missing_file_without_self_signed_refused_at_start(backends, tmp_path: Path, missing: str) -> None:
    cert, key = make_certificates(tmp_path / "certs")
    absent = tmp_path / "certs" / "absent.pem"
    pair = (absent, key) if missing == "cert" else (cert, absent)
    returncode, stdout, stderr = run_gateway_expecting_failure(
        tls_config(free_port(), backends.web1.address, [pair]), tmp_path)
    output = assert_clear_failure(returncode, stdout, stderr, absent)
    assert "does not exist" in output, output


@pytest.mark.parametrize("broken", ["cert", "key"])
def test_garbage_file_refused_at_start(backends, tmp_path: Path, broken: str) -> None:
    cert, key = make_certificates(tmp_path / "certs")
    (cert if broken == "cert" else key).write_bytes(b"this is not PEM\n")
    returncode, stdout, stderr = run_gateway_expecting_failure(
        tls_config(free_port(), backends.web1.address, [(cert, key)]), tmp_path)
    assert_clear_failure(returncode, stdout, stderr, cert if broken == "cert" else key)


def test_unreadable_key_refused_at_start(backends, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file: cannot make one unreadable")
    cert, key = make_certificates(tmp_path / "certs")
    key.chmod(0)
    try:
        returncode, stdout, stderr = run_gateway_expecting_failure(
            tls_config(free_port(), backends.web1.address, [(cert, key)]), tmp_path)
    finally:
        key.chmod(0o600)
    output = assert_clear_failure(returncode, stdout, stderr, key)
    assert "not readable" in output, output


@pytest.mark.parametrize("which", ["cert", "key"])
def test_directory_instead_of_file_refused_at_start(backends, tmp_path: Path, which: str) -> None:
    """A path that names a directory (readable even for root): a clear error, no traceback."""
    cert, key = make_certificates(tmp_path / "certs")
    directory = tmp_path / "certs" / "a-directory.pem"
    directory.mkdir()
    pair = (directory, key) if which == "cert" else (cert, directory)
    returncode, stdout, stderr = run_gateway_expecting_failure(
        tls_config(free_port(), backends.web1.address, [pair]), tmp_path)
    assert_clear_failure(returncode, stdout, stderr, directory)


def test_broken_second_certificate_refused_at_start(backends, tmp_path: Path) -> None:
    certs = make_cert_set(tmp_path / "certs")
    returncode, stdout, stderr = run_gateway_expecting_failure(
        tls_config(free_port(), backends.web1.address, [certs.gateway, (certs.other[0], certs.gateway[1])]),
        tmp_path)
    assert_clear_failure(returncode, stdout, stderr, certs.other[0], certs.gateway[1])


def write_expired_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA-signed localhost certificate that expired a month ago: (ca, cert, key)."""
    make_certificates(directory)  # the CA (and a valid pair we ignore)
    ca_cert, ca_key = load_ca(str(directory))
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=60)
    cert, key = generate_server_certificate(ca_cert, ca_key, ("localhost",), ("127.0.0.1",), days=30, now=past)
    assert cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc)
    cert_path, key_path = directory / "expired.crt", directory / "expired.key"
    cert_path.write_bytes(certificate_pem(cert))
    key_path.write_bytes(private_key_pem(key))
    key_path.chmod(0o600)
    return directory / "ca.crt", cert_path, key_path


def test_expired_certificate_warns_and_starts(backends, gateway, tmp_path: Path) -> None:
    ca, cert, key = write_expired_certificate(tmp_path / "certs")
    port = free_port()
    instance = gateway(tls_config(port, backends.web1.address, [(cert, key)]))
    stdout = instance.wait_for_output(str(cert), timeout=5.0)
    warning = [line for line in stdout.splitlines() if str(cert) in line]
    assert any("expired" in line for line in warning), stdout
    # It serves, and a verifying client refuses the expired certificate.
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        tls_connect(port, tls_client_context(ca)).close()
    assert caught.value.verify_code == 10, caught.value  # X509_V_ERR_CERT_HAS_EXPIRED
    assert instance.process.poll() is None


# -- self_signed: true -------------------------------------------------------------------------

def test_self_signed_generates_absent_files_at_start(backends, gateway, tmp_path: Path) -> None:
    directory = tmp_path / "generated" / "certs"  # not even the directory exists yet
    cert, key = directory / "site.crt", directory / "site.key"
    port = free_port()
    config = tls_config(port, backends.web1.address, [(cert, key)], self_signed=True)
    instance = gateway(config)
    for path in (cert, key, directory / "ca.crt", directory / "ca.key"):
        assert path.exists(), path
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600
    stdout = instance.wait_for_output(str(cert), timeout=5.0)
    assert str(directory / "ca.crt") in stdout, stdout
    generated = x509.load_pem_x509_certificate(cert.read_bytes())
    san = generated.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    for server_hostname in ("localhost", "127.0.0.1"):
        status, _, body, der = fetch(port, directory / "ca.crt", server_hostname=server_hostname)
        assert status == 200, body
        assert der == certificate_der(cert)
    # A second start finds the files and keeps them.
    instance.stop()
    der_before = certificate_der(cert)
    again = gateway(config)
    assert certificate_der(cert) == der_before
    status, _, _, der = fetch(port, directory / "ca.crt")
    assert (status, der) == (200, der_before)
    assert "generated certificate" not in again.stdout_text(), again.stdout_text()


def test_self_signed_with_half_a_pair_refused_at_start(backends, tmp_path: Path) -> None:
    cert, key = make_certificates(tmp_path / "certs")
    key.unlink()
    returncode, stdout, stderr = run_gateway_expecting_failure(
        tls_config(free_port(), backends.web1.address, [(cert, key)], self_signed=True), tmp_path)
    assert_clear_failure(returncode, stdout, stderr, cert, key)
    assert not key.exists()


# -- SIGHUP: certificates reloaded from disk -----------------------------------------------------

#: What the gateway logs after a SIGHUP that applied the files, and after one that did not
#: (its reloader has logged either wording; both are accepted).
RELOADED = ("SIGHUP: configuration reloaded", "SIGHUP: reloaded")
NOT_RELOADED = ("SIGHUP: configuration rejected", "certificates not reloaded")


def log_lines(instance: Gateway, markers: tuple[str, ...]) -> list[str]:
    return [line for line in instance.stdout_text().splitlines() if any(marker in line for marker in markers)]


def sighup_and_wait(instance: Gateway, markers: tuple[str, ...], timeout: float = 10.0) -> str:
    """Send SIGHUP, wait for one more stdout line with one of ``markers``; return that line.

    Both outcomes are watched, so that the wrong one fails at once with the line it logged.
    """
    before = {markers: len(log_lines(instance, markers)) for markers in (RELOADED, NOT_RELOADED)}
    instance.send_signal(signal.SIGHUP)

    def outcome() -> tuple[tuple[str, ...], str] | None:
        for kind, count in before.items():
            lines = log_lines(instance, kind)
            if len(lines) > count:
                return kind, lines[-1]
        return None

    kind, line = wait_until(outcome, timeout, message="a SIGHUP outcome logged")
    assert kind == markers, f"SIGHUP: expected {markers[0]!r}, got: {line}\n{instance.output()}"
    return line


def test_sighup_picks_up_replaced_certificate(backends, gateway, tmp_path: Path) -> None:
    certs = make_cert_set(tmp_path / "certs")
    cert, key = certs.gateway
    port = free_port()
    instance = gateway(tls_config(port, backends.web1.address, [(cert, key)]))
    context = tls_client_context(certs.ca, maximum=ssl.TLSVersion.TLSv1_2)
    old_der = certificate_der(cert)
    kept = tls_connect(port, context)  # a keep-alive connection from before the reload
    try:
        assert get(kept, "/json", port=port)[0] == 200
        old_session = kept.session
        assert kept.getpeercert(binary_form=True) == old_der
        make_certificates(certs.directory, hosts=("localhost", "renewed.test"), ips=("127.0.0.1",), force=True)
        new_der = certificate_der(cert)
        assert new_der != old_der
        sighup_and_wait(instance, RELOADED)
        # New connections get the new certificate...
        with tls_connect(port, tls_client_context(certs.ca), "renewed.test") as sock:
            assert sock.getpeercert(binary_form=True) == new_der
            assert ("DNS", "renewed.test") in sans(sock)
            assert get(sock, "/json", "renewed.test", port)[0] == 200
        # ... even when they offer a session from before the reload (no resumption onto the old one).
        with tls_connect(port, context, session=old_session) as sock:
            assert sock.getpeercert(binary_form=True) == new_der
            assert get(sock, "/json", port=port)[0] == 200
        # The connection opened before the reload keeps working.
        assert get(kept, "/json", port=port)[0] == 200
    finally:
        kept.close()
    assert instance.process.poll() is None, instance.output()


def break_pair(cert: Path, key: Path, how: str, spare_key: Path) -> Path:
    """Spoil the files on disk; returns the file the error should name."""
    if how == "garbage cert":
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        return cert
    if how == "garbage key":
        key.write_bytes(os.urandom(300))
        return key
    if how == "key of another certificate":
        key.write_bytes(spare_key.read_bytes())
        return key
    if how == "cert replaced by a directory":
        cert.unlink()
        cert.mkdir()
        return cert
    assert how == "key deleted"
    key.unlink()
    return key


@pytest.mark.parametrize("how", ["garbage cert", "garbage key", "key of another certificate", "key deleted",
                                 "cert replaced by a directory"])
def test_sighup_with_broken_replacement_keeps_old_certificate(backends, gateway, tmp_path: Path,
                                                              how: str) -> None:
    certs = make_cert_set(tmp_path / "certs")
    cert, key = certs.gateway
    port = free_port()
    instance = gateway(tls_config(port, backends.web1.address, [(cert, key)]))
    old_der = certificate_der(cert)
    named = break_pair(cert, key, how, spare_key=certs.other[1])
    error = sighup_and_wait(instance, NOT_RELOADED)
    assert str(named) in error, error
    assert instance.process.poll() is None, instance.output()
    for _ in range(2):
        status, _, body, der = fetch(port, certs.ca)
        assert (status, der) == (200, old_der), body
    # Fixed files: the next SIGHUP takes them.
    key.unlink(missing_ok=True)
    if cert.is_dir():
        cert.rmdir()
    make_certificates(certs.directory, force=True)
    sighup_and_wait(instance, RELOADED)
    status, _, _, der = fetch(port, certs.ca)
    assert status == 200 and der == certificate_der(cert) != old_der


def test_sighup_reloads_sni_certificates_all_or_nothing(backends, gateway, tmp_path: Path) -> None:
    """One listener, two certificates: a broken second one keeps both old ones; fixed, both new."""
    certs = make_cert_set(tmp_path / "certs")
    port = free_port()
    instance = gateway(tls_config(port, backends.web1.address, [certs.gateway, certs.other]))
    old_gateway, old_other = certificate_der(certs.gateway[0]), certificate_der(certs.other[0])
    make_certificates(certs.directory, force=True)  # a valid new first certificate
    certs.other[0].write_bytes(b"garbage\n")          # a broken second one
    assert str(certs.other[0]) in sighup_and_wait(instance, NOT_RELOADED)
    assert fetch(port, certs.ca)[3] == old_gateway
    assert fetch(port, certs.ca, server_hostname="other.test")[3] == old_other
    make_certificates(certs.directory, name="other", hosts=("other.test", "*.wild.test"), force=True)
    sighup_and_wait(instance, RELOADED)
    assert fetch(port, certs.ca)[3] == certificate_der(certs.gateway[0]) != old_gateway
    assert fetch(port, certs.ca, server_hostname="x.wild.test")[3] == certificate_der(certs.other[0]) != old_other


def test_sighup_rejected_reload_changes_no_listener(backends, gateway, tmp_path: Path) -> None:
    """Two TLS listeners; the first one's files are renewed, the second one's broken.

    The reload is rejected ("the previous one keeps serving"), so the first
    listener must keep its old certificate too: a rejected reload applies
    nothing, as for every other part of the configuration.
    """
    first, second = make_cert_set(tmp_path / "first"), make_cert_set(tmp_path / "second")
    port_a, port_b = free_port(), free_port()
    instance = gateway(gateway_config(port_a, web=[backends.web1.address], listeners=[
        tls_listener(port_a, [first.gateway], name="a"), tls_listener(port_b, [second.gateway], name="b")]))
    old_a, old_b = certificate_der(first.gateway[0]), certificate_der(second.gateway[0])
    make_certificates(first.directory, force=True)
    second.gateway[0].write_bytes(b"garbage\n")
    assert str(second.gateway[0]) in sighup_and_wait(instance, NOT_RELOADED)
    assert fetch(port_b, second.ca)[3] == old_b
    assert fetch(port_a, first.ca)[3] == old_a, \
        "listener a switched to its new certificate although the reload was rejected"
