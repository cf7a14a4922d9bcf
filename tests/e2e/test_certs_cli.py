"""``gateway certs`` end to end: the real console script, then real TLS handshakes on 127.0.0.1.

The generated files are served by a throwaway server built on Python's
``ssl`` module (not the gateway: these tests are about the files), and
verified by clients that keep verification on: ``ssl.create_default_context``
(CERT_REQUIRED, check_hostname) plus VERIFY_X509_STRICT, Python 3.13's
default, and curl when it is installed.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CLI_TIMEOUT = 60.0
IO_TIMEOUT = 5.0
RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nverified\n"


def gateway_command() -> list[str]:
    script = Path(sys.executable).parent / "gateway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*gateway_command(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT)


def generate(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(cwd, "certs", "generate", *args)
    assert result.returncode == 0, result.stderr
    return result


@contextmanager
def tls_server(cert: Path, key: Path, host: str = "127.0.0.1") -> Iterator[int]:
    """A TLS server on *host*, port 0, answering each connection with RESPONSE; yields the port.

    Connections are served one after the other; a handshake the client
    aborts (failed verification) only ends that connection.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, 0), family=family)
    listener.settimeout(0.2)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(IO_TIMEOUT)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(4096)
                    tls.sendall(RESPONSE)
            except (ssl.SSLError, OSError):
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, name="tls-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        thread.join(IO_TIMEOUT)
        listener.close()
        assert not thread.is_alive(), "the TLS server thread did not stop"


def client_context(cafile: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    return context


def fetch(port: int, cafile: Path, server_hostname: str, host: str = "127.0.0.1") -> bytes:
    """One verified TLS request; raises ssl.SSLCertVerificationError when verification fails."""
    with socket.create_connection((host, port), timeout=IO_TIMEOUT) as raw:
        with client_context(cafile).wrap_socket(raw, server_hostname=server_hostname) as tls:
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    return data.split(b"\r\n\r\n", 1)[1]


def ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def default_certs(tmp_path: Path) -> Path:
    """``gateway certs generate --out certs`` in a fresh directory; returns that certs directory."""
    result = generate(tmp_path, "--out", "certs")
    assert "created local CA certs/ca.crt (key certs/ca.key)" in result.stdout
    assert "certs/gateway.crt (key certs/gateway.key) for localhost, 127.0.0.1, ::1" in result.stdout
    assert "curl --cacert certs/ca.crt https://localhost:8443/" in result.stdout
    return tmp_path / "certs"


def test_generate_writes_the_four_files_with_their_modes(default_certs):
    names = sorted(path.name for path in default_certs.iterdir())
    assert names == ["ca.crt", "ca.key", "gateway.crt", "gateway.key"]
    assert mode(default_certs / "ca.key") == mode(default_certs / "gateway.key") == 0o600
    assert mode(default_certs / "ca.crt") == mode(default_certs / "gateway.crt") == 0o644


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_ca_verifies_the_server_certificate(default_certs, server_hostname):
    with tls_server(default_certs / "gateway.crt", default_certs / "gateway.key") as port:
        assert fetch(port, default_certs / "ca.crt", server_hostname) == b"verified\n"


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_ca_verifies_the_ipv6_loopback(default_certs):
    with tls_server(default_certs / "gateway.crt", default_certs / "gateway.key", host="::1") as port:
        assert fetch(port, default_certs / "ca.crt", "::1", host="::1") == b"verified\n"


@pytest.mark.parametrize("server_hostname", ["wrong.example", "127.0.0.2"])
def test_a_name_outside_the_certificate_fails_verification(default_certs, server_hostname):
    with tls_server(default_certs / "gateway.crt", default_certs / "gateway.key") as port:
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            fetch(port, default_certs / "ca.crt", server_hostname)
        assert fetch(port, default_certs / "ca.crt", "localhost") == b"verified\n"  # the server is fine


def test_another_ca_does_not_verify(default_certs, tmp_path):
    generate(tmp_path, "--out", "other")
    with tls_server(default_certs / "gateway.crt", default_certs / "gateway.key") as port:
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
            fetch(port, tmp_path / "other" / "ca.crt", "localhost")


def test_existing_files_are_not_overwritten(default_certs, tmp_path):
    before = {path.name: path.read_bytes() for path in default_certs.iterdir()}
    result = run_cli(tmp_path, "certs", "generate", "--out", "certs", "--host", "new.test")
    assert result.returncode == 1
    assert result.stderr == "gateway: certs/gateway.crt already exists (use --force to replace it)\n"
    assert result.stdout == ""
    assert {path.name: path.read_bytes() for path in default_certs.iterdir()} == before


def test_force_and_name_reuse_the_ca(default_certs, tmp_path):
    ca_before = (default_certs / "ca.crt").read_bytes()
    result = generate(tmp_path, "--out", "certs", "--host", "new.test", "--ip", "127.0.0.1", "--force")
    assert "reused local CA certs/ca.crt" in result.stdout
    result = generate(tmp_path, "--out", "certs", "--name", "other", "--host", "other.test", "--days", "30")
    assert "reused local CA certs/ca.crt" in result.stdout and "certs/other.crt" in result.stdout
    assert (default_certs / "ca.crt").read_bytes() == ca_before
    assert mode(default_certs / "other.key") == 0o600
    with tls_server(default_certs / "gateway.crt", default_certs / "gateway.key") as port:
        assert fetch(port, default_certs / "ca.crt", "new.test") == b"verified\n"
        with pytest.raises(ssl.SSLCertVerificationError):
            fetch(port, default_certs / "ca.crt", "localhost")  # replaced: no longer in the certificate
    with tls_server(default_certs / "other.crt", default_certs / "other.key") as port:
        assert fetch(port, default_certs / "ca.crt", "other.test") == b"verified\n"


def test_self_signed_is_its_own_trust_anchor(tmp_path):
    result = generate(tmp_path, "--out", "certs", "--self-signed")
    assert "self-signed certificate certs/gateway.crt" in result.stdout
    certs_dir = tmp_path / "certs"
    assert sorted(path.name for path in certs_dir.iterdir()) == ["gateway.crt", "gateway.key"]
    assert mode(certs_dir / "gateway.key") == 0o600
    with tls_server(certs_dir / "gateway.crt", certs_dir / "gateway.key") as port:
        for name in ("localhost", "127.0.0.1"):
            assert fetch(port, certs_dir / "gateway.crt", name) == b"verified\n"
        with pytest.raises(ssl.SSLCertVerificationError):
            fetch(port, certs_dir / "gateway.crt", "wrong.example")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("self_signed", [False, True])
def test_curl_verifies(tmp_path, self_signed):
    generate(tmp_path, "--out", "certs", *(["--self-signed"] if self_signed else []))
    certs_dir = tmp_path / "certs"
    cafile = certs_dir / ("gateway.crt" if self_signed else "ca.crt")
    with tls_server(certs_dir / "gateway.crt", certs_dir / "gateway.key") as port:
        for url in (f"https://localhost:{port}/", f"https://127.0.0.1:{port}/"):
            result = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(cafile), url],
                                    capture_output=True, text=True, timeout=CLI_TIMEOUT)
            assert (result.returncode, result.stdout) == (0, "verified\n"), result.stderr
        result = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(cafile),
                                 "--resolve", f"wrong.example:{port}:127.0.0.1", f"https://wrong.example:{port}/"],
                                capture_output=True, text=True, timeout=CLI_TIMEOUT)
        assert result.returncode == 60, result.stderr  # CURLE_PEER_FAILED_VERIFICATION


def test_show(default_certs, tmp_path):
    result = run_cli(tmp_path, "certs", "show", "certs/gateway.crt")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "certs/gateway.crt"
    fields = dict(line.strip().split(":", 1) for line in lines[1:])
    assert fields["subject"].strip() == "CN=localhost,O=gateway"
    assert fields["SANs"].strip() == "DNS:localhost, IP:127.0.0.1, IP:::1"
    assert fields["issuer"].strip().startswith("CN=gateway local CA")
    assert fields["not after"].strip().endswith("UTC (397 days left)")
    assert fields["key"].strip() == "ECDSA P-256 (secp256r1)"
    assert len(fields["sha256"].strip().split(":")) == 32
    result = run_cli(tmp_path, "certs", "show", "certs/ca.crt")
    assert "issuer:      (self-signed)" in result.stdout and "CA:          yes" in result.stdout


@pytest.mark.parametrize("setup, expected", [
    (None, "gateway: cannot read missing.crt: No such file or directory\n"),
    (b"not a certificate\n", "gateway: missing.crt: not a certificate (neither PEM nor DER)\n"),
])
def test_show_errors_are_one_line(tmp_path, setup, expected):
    if setup is not None:
        (tmp_path / "missing.crt").write_bytes(setup)
    result = run_cli(tmp_path, "certs", "show", "missing.crt")
    assert (result.returncode, result.stdout, result.stderr) == (1, "", expected)


def test_show_a_key_file(default_certs, tmp_path):
    result = run_cli(tmp_path, "certs", "show", "certs/gateway.key")
    assert result.returncode == 1
    assert result.stderr == "gateway: certs/gateway.key: not a certificate (found a private key)\n"


def test_module_entry_point(tmp_path):
    command = [sys.executable, "-m", "gateway.cli", "certs", "generate", "--out", "m", "--host", "m.test"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "gateway.crt").exists()
