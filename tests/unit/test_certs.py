"""gateway.certs: local CA, server and self-signed certificates, files on disk, descriptions."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway import certs
from gateway.certs import CertificateError

UTC = datetime.timezone.utc


def ext(cert: x509.Certificate, kind: type) -> x509.ExtensionType:
    return cert.extensions.get_extension_for_class(kind)


def san(cert: x509.Certificate) -> tuple[list[str], list[ipaddress._BaseAddress]]:
    names = ext(cert, x509.SubjectAlternativeName).value
    return names.get_values_for_type(x509.DNSName), names.get_values_for_type(x509.IPAddress)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ski_of(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return certs.generate_ca()


@pytest.fixture
def umask() -> Iterator[None]:
    """A restrictive umask, to show that the modes do not depend on it."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


# --- names -------------------------------------------------------------------


@pytest.mark.parametrize("hosts, ips, dns, addresses", [
    ((), (), ["localhost"], ["127.0.0.1", "::1"]),
    (["example.test"], (), ["example.test"], []),
    ((), ["10.0.0.1"], [], ["10.0.0.1"]),
    (["a.test", "b.test"], ["192.0.2.1", "2001:db8::1"], ["a.test", "b.test"], ["192.0.2.1", "2001:db8::1"]),
    (["*.example.test", "example.test"], (), ["*.example.test", "example.test"], []),
    (["Example.TEST."], (), ["example.test"], []),  # lower case, no trailing dot
    (["bücher.example"], (), ["xn--bcher-kva.example"], []),  # IDNA A-label
    (["10.0.0.5", "host.test"], (), ["host.test"], ["10.0.0.5"]),  # an IP given as a host is an IP
    (["a.test", "a.test"], ["[::1]", "::1"], ["a.test"], ["::1"]),  # duplicates dropped, brackets allowed
])
def test_subject_names(hosts, ips, dns, addresses):
    names = certs.SubjectNames.parse(hosts, ips)
    assert list(names.hosts) == dns
    assert [str(ip) for ip in names.ips] == addresses


@pytest.mark.parametrize("host", ["", "-bad.test", "bad-.test", "under_score.test", "a..b", "*", "*.test",
                                  "a.*.test", "x" * 64 + ".test", "spa ce.test", "http://x.test"])
def test_bad_host_names(host):
    with pytest.raises(CertificateError):
        certs.SubjectNames.parse([host])


@pytest.mark.parametrize("ip", ["1.2.3", "localhost", "::g", "256.0.0.1"])
def test_bad_ips(ip):
    with pytest.raises(CertificateError, match="not an IP address"):
        certs.SubjectNames.parse([], [ip])


# --- the certificates --------------------------------------------------------


def test_ca_certificate(ca):
    cert, key = ca
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert ext(cert, x509.SubjectKeyIdentifier).value == ski_of(key)
    assert isinstance(key.curve, ec.SECP256R1)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3650) <= lifetime <= datetime.timedelta(days=3650, hours=1)


def test_server_certificate_extensions_and_signature(ca):
    ca_cert, ca_key = ca
    cert, key = certs.generate_server_certificate(ca_cert, ca_key, ["app.test", "www.app.test"], ["192.0.2.7"])
    assert san(cert) == (["app.test", "www.app.test"], [ipaddress.ip_address("192.0.2.7")])
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "app.test"
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)  # raises if the CA did not sign it
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign and not usage.value.crl_sign
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert (ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier
            == ext(ca_cert, x509.SubjectKeyIdentifier).value.digest)
    assert ext(cert, x509.SubjectKeyIdentifier).value == ski_of(key)
    assert isinstance(key.curve, ec.SECP256R1)
    assert public_der(cert.public_key()) == public_der(key.public_key())


def test_server_certificate_defaults(ca):
    cert, _ = certs.generate_server_certificate(*ca)
    assert san(cert) == (["localhost"], [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")])
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=397) <= lifetime <= datetime.timedelta(days=397, hours=1)


def test_server_certificate_never_outlives_its_ca():
    ca_cert, ca_key = certs.generate_ca(days=30)
    cert, _ = certs.generate_server_certificate(ca_cert, ca_key, days=397)
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


def test_not_signed_by_another_ca(ca):
    other_ca, _ = certs.generate_ca()
    cert, _ = certs.generate_server_certificate(*ca)
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(other_ca)


def test_long_first_host_has_no_common_name(ca):
    host = ("a" * 60) + ".example.test"
    cert, _ = certs.generate_server_certificate(*ca, [host])
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME) == []
    assert san(cert)[0] == [host]


def test_self_signed_certificate():
    cert, key = certs.generate_self_signed(["self.test"], ["127.0.0.1"])
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    assert not ext(cert, x509.BasicConstraints).value.ca
    assert ext(cert, x509.KeyUsage).value.digital_signature
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert san(cert) == (["self.test"], [ipaddress.ip_address("127.0.0.1")])
    assert public_der(cert.public_key()) == public_der(key.public_key())


@pytest.mark.parametrize("days", [0, -1])
def test_days_must_be_positive(ca, days):
    with pytest.raises(CertificateError):
        certs.generate_server_certificate(*ca, days=days)


# --- files -------------------------------------------------------------------


def test_generate_files_writes_ca_and_server_pair(tmp_path, umask):
    out = tmp_path / "certs"  # created when missing
    result = certs.generate_files(str(out), ["app.test"], ["127.0.0.1"])
    assert sorted(os.listdir(out)) == ["ca.crt", "ca.key", "gateway.crt", "gateway.key"]
    assert result.ca_created and result.ca_cert_path == str(out / "ca.crt")
    for name in ("ca.key", "gateway.key"):
        assert mode(out / name) == 0o600
    for name in ("ca.crt", "gateway.crt"):
        assert mode(out / name) == 0o644
    ca_cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    leaf_file = (out / "gateway.crt").read_bytes()
    assert leaf_file.count(b"BEGIN CERTIFICATE") == 1  # the leaf only, no chain
    leaf = x509.load_pem_x509_certificate(leaf_file)
    leaf.verify_directly_issued_by(ca_cert)
    key = serialization.load_pem_private_key((out / "gateway.key").read_bytes(), None)
    assert public_der(key.public_key()) == public_der(leaf.public_key())
    assert san(leaf) == (["app.test"], [ipaddress.ip_address("127.0.0.1")])


def test_modes_do_not_depend_on_a_permissive_umask(tmp_path):
    previous = os.umask(0)
    try:
        certs.generate_files(str(tmp_path))
    finally:
        os.umask(previous)
    assert mode(tmp_path / "gateway.key") == 0o600 and mode(tmp_path / "ca.key") == 0o600
    assert mode(tmp_path / "gateway.crt") == 0o644


@pytest.mark.parametrize("existing", ["gateway.crt", "gateway.key"])
def test_existing_file_is_never_overwritten(tmp_path, existing):
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(CertificateError, match=rf"{existing} already exists \(use --force"):
        certs.generate_files(str(tmp_path))
    assert os.listdir(tmp_path) == [existing]  # nothing else written, not even a CA
    assert (tmp_path / existing).read_bytes() == b"precious"


def test_existing_file_refused_for_self_signed_too(tmp_path):
    (tmp_path / "gateway.key").write_bytes(b"precious")
    with pytest.raises(CertificateError, match="gateway.key already exists"):
        certs.generate_files(str(tmp_path), self_signed=True)
    assert os.listdir(tmp_path) == ["gateway.key"]


def test_force_replaces_the_pair_and_reuses_the_ca(tmp_path):
    certs.generate_files(str(tmp_path))
    ca_before = {name: (tmp_path / name).read_bytes() for name in ("ca.crt", "ca.key")}
    leaf_before = (tmp_path / "gateway.crt").read_bytes()
    (tmp_path / "gateway.key").chmod(0o644)  # a loosened mode is not inherited by the new key
    result = certs.generate_files(str(tmp_path), ["new.test"], force=True)
    assert not result.ca_created
    assert {name: (tmp_path / name).read_bytes() for name in ("ca.crt", "ca.key")} == ca_before
    assert (tmp_path / "gateway.crt").read_bytes() != leaf_before
    leaf = x509.load_pem_x509_certificate((tmp_path / "gateway.crt").read_bytes())
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before["ca.crt"]))
    assert san(leaf) == (["new.test"], [])
    assert mode(tmp_path / "gateway.key") == 0o600
    assert sorted(os.listdir(tmp_path)) == ["ca.crt", "ca.key", "gateway.crt", "gateway.key"]  # no temp files


def test_second_name_reuses_the_ca_without_force(tmp_path):
    first = certs.generate_files(str(tmp_path))
    second = certs.generate_files(str(tmp_path), ["other.test"], name="other")
    assert first.ca_created and not second.ca_created
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    for name in ("gateway", "other"):
        x509.load_pem_x509_certificate((tmp_path / f"{name}.crt").read_bytes()).verify_directly_issued_by(ca_cert)
    assert mode(tmp_path / "other.key") == 0o600


def test_self_signed_files_leave_the_ca_alone(tmp_path):
    result = certs.generate_files(str(tmp_path), ["self.test"], self_signed=True)
    assert result.ca_cert_path is None
    assert sorted(os.listdir(tmp_path)) == ["gateway.crt", "gateway.key"]
    cert = x509.load_pem_x509_certificate((tmp_path / "gateway.crt").read_bytes())
    cert.verify_directly_issued_by(cert)
    assert mode(tmp_path / "gateway.key") == 0o600 and mode(tmp_path / "gateway.crt") == 0o644


@pytest.mark.parametrize("name", ["ca", "../x", "a/b", "", ".hidden"])
def test_bad_file_names(tmp_path, name):
    with pytest.raises(CertificateError):
        certs.generate_files(str(tmp_path), name=name)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("present", ["ca.crt", "ca.key"])
def test_half_a_ca_is_refused(tmp_path, present):
    certs.generate_files(str(tmp_path))
    (tmp_path / ({"ca.crt", "ca.key"} - {present}).pop()).unlink()
    with pytest.raises(CertificateError, match=f"{present} exists but"):
        certs.generate_files(str(tmp_path), name="other")
    assert not (tmp_path / "other.crt").exists()


def test_ca_key_of_another_ca_is_refused(tmp_path):
    certs.generate_files(str(tmp_path))
    _, other_key = certs.generate_ca()
    (tmp_path / "ca.key").write_bytes(certs.private_key_pem(other_key))
    with pytest.raises(CertificateError, match="ca.key is not the key of"):
        certs.generate_files(str(tmp_path), name="other")


def test_expired_ca_is_refused(tmp_path):
    past = datetime.datetime.now(UTC) - datetime.timedelta(days=30)
    ca_cert, ca_key = certs.generate_ca(days=10, now=past)
    (tmp_path / "ca.crt").write_bytes(certs.certificate_pem(ca_cert))
    (tmp_path / "ca.key").write_bytes(certs.private_key_pem(ca_key))
    with pytest.raises(CertificateError, match="ca.crt expired on .*delete"):
        certs.generate_files(str(tmp_path))


def test_leaf_cannot_be_a_ca_file(tmp_path):
    with pytest.raises(CertificateError, match="a file of the local CA"):
        certs.ensure_self_signed(str(tmp_path / "ca.crt"), str(tmp_path / "server.key"))


# --- ensure_self_signed (start-up) -------------------------------------------


def test_ensure_self_signed_generates_once(tmp_path):
    cert_path, key_path = tmp_path / "tls" / "site.crt", tmp_path / "tls" / "site.key"
    assert certs.ensure_self_signed(str(cert_path), str(key_path)) is True
    assert sorted(os.listdir(tmp_path / "tls")) == ["ca.crt", "ca.key", "site.crt", "site.key"]
    assert mode(key_path) == 0o600 and mode(tmp_path / "tls" / "ca.key") == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    assert san(cert) == (["localhost"], [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")])
    before = cert_path.read_bytes()
    assert certs.ensure_self_signed(str(cert_path), str(key_path)) is False
    assert cert_path.read_bytes() == before


def test_ensure_self_signed_shares_the_ca_beside_it(tmp_path):
    assert certs.ensure_self_signed(str(tmp_path / "a.crt"), str(tmp_path / "a.key"), ["a.test"], [])
    assert certs.ensure_self_signed(str(tmp_path / "b.crt"), str(tmp_path / "b.key"), ["b.test"], [])
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    for name in ("a", "b"):
        x509.load_pem_x509_certificate((tmp_path / f"{name}.crt").read_bytes()).verify_directly_issued_by(ca_cert)


@pytest.mark.parametrize("present", ["site.crt", "site.key"])
def test_ensure_self_signed_refuses_half_a_pair(tmp_path, present):
    (tmp_path / present).write_bytes(b"precious")
    with pytest.raises(CertificateError, match=f"{present} exists but"):
        certs.ensure_self_signed(str(tmp_path / "site.crt"), str(tmp_path / "site.key"))
    assert os.listdir(tmp_path) == [present]


# --- describe ----------------------------------------------------------------


def write_cert(path: Path, cert: x509.Certificate) -> str:
    path.write_bytes(certs.certificate_pem(cert))
    return str(path)


def test_describe_a_server_certificate(tmp_path, ca):
    ca_cert, ca_key = ca
    cert, _ = certs.generate_server_certificate(ca_cert, ca_key, ["app.test"], ["::1"], days=30)
    text = certs.describe_certificate(write_cert(tmp_path / "app.crt", cert))
    assert "CN=app.test" in text
    assert "DNS:app.test, IP:::1" in text
    assert f"issuer:      {ca_cert.subject.rfc4514_string()}" in text
    assert "(30 days left)" in text
    assert "ECDSA P-256" in text
    assert "CA:          no" in text
    assert cert.fingerprint(hashes.SHA256()).hex(":").upper() in text
    assert f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC" in text


def test_describe_a_self_signed_ca(tmp_path, ca):
    text = certs.describe_certificate(write_cert(tmp_path / "ca.crt", ca[0]))
    assert "issuer:      (self-signed)" in text
    assert "CA:          yes" in text
    assert "SANs:        (none)" in text


def test_describe_detects_expiry(tmp_path):
    now = datetime.datetime.now(UTC)
    cert, _ = certs.generate_self_signed(days=10, now=now - datetime.timedelta(days=13))
    path = write_cert(tmp_path / "old.crt", cert)
    assert "(EXPIRED 3 days ago)" in certs.describe_certificate(path)  # not after: 13 - 10 days ago
    assert certs.is_expired(cert)
    earlier = certs.describe_certificate(path, now=now - datetime.timedelta(days=12))
    assert "EXPIRED" not in earlier and "(9 days left)" in earlier
    just_after = certs.describe_certificate(path, now=cert.not_valid_after_utc + datetime.timedelta(seconds=1))
    assert "(EXPIRED less than a day ago)" in just_after


def test_describe_not_yet_valid(tmp_path):
    cert, _ = certs.generate_self_signed(now=datetime.datetime.now(UTC) + datetime.timedelta(days=2))
    assert "(not yet valid)" in certs.describe_certificate(write_cert(tmp_path / "future.crt", cert))


def test_describe_every_certificate_of_a_chain_file(tmp_path, ca):
    cert, _ = certs.generate_server_certificate(*ca)
    path = tmp_path / "chain.pem"
    path.write_bytes(certs.certificate_pem(cert) + certs.certificate_pem(ca[0]))
    text = certs.describe_certificate(str(path))
    assert f"{path} [1/2]" in text and f"{path} [2/2]" in text


def test_describe_der(tmp_path, ca):
    path = tmp_path / "ca.der"
    path.write_bytes(ca[0].public_bytes(serialization.Encoding.DER))
    assert "CA:          yes" in certs.describe_certificate(str(path))


@pytest.mark.parametrize("content, message", [
    (None, "cannot read .*: No such file or directory"),
    (b"", "not a certificate"),
    (b"hello world\n", "not a certificate"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", "not a valid PEM certificate"),
])
def test_describe_errors_are_one_line(tmp_path, content, message):
    path = tmp_path / "x.crt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CertificateError, match=message) as error:
        certs.describe_certificate(str(path))
    assert "\n" not in str(error.value)


def test_describe_a_key_says_so(tmp_path):
    path = tmp_path / "x.key"
    path.write_bytes(certs.private_key_pem(certs.generate_private_key()))
    with pytest.raises(CertificateError, match="not a certificate \\(found a private key\\)"):
        certs.describe_certificate(str(path))
