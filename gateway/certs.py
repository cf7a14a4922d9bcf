"""Certificate generation and inspection for local TLS (``gateway certs`` and ``self_signed: true``).

Everything is built with ``cryptography``; nothing shells out to ``openssl``.
Nothing here imports Twisted: the functions block (key generation, file
I/O), so the gateway calls them before the reactor runs.

What gets made, and why:

- Keys are ECDSA P-256: a TLS handshake signs with the server key, and P-256
  signatures are far cheaper than RSA-2048's (see ARCHITECTURE.md, TLS).
  They are written as unencrypted PKCS#8 PEM, which Python's ssl loads.
- ``generate --out DIR`` makes a small local CA (``ca.crt``/``ca.key``, 10
  years, ``pathlen:0``: it signs leaves only) and a server certificate signed
  by it (``NAME.crt``/``NAME.key``, NAME defaulting to ``gateway``).  Clients
  trust ``ca.crt`` once; every later certificate signed by the same CA
  (another ``--name`` for SNI, or new hosts with ``--force``) is then trusted
  too.  An existing ``ca.crt``/``ca.key`` pair in DIR is always reused and
  never replaced, not even with ``--force``: delete both files to start a
  new CA.
- ``NAME.crt`` holds the leaf only, not the chain: the CA is the client's
  trust anchor, so sending it in the handshake adds bytes and nothing else.
- The server certificate lives 397 days by default, the longest lifetime
  browsers accept for a server certificate, and never outlives its CA.
- ``--self-signed`` makes one certificate that is its own trust anchor.  It
  keeps ``CA:FALSE`` and no ``keyCertSign``: OpenSSL 3 (curl, Python's
  ``ssl``) accepts such a certificate as a trust anchor when it is named
  directly (``--cacert gateway.crt``), and Firefox refuses a ``CA:TRUE``
  certificate used as a server's own.
- ``ensure_self_signed``, called at start-up for ``self_signed: true``,
  signs with the local CA beside the certificate (created there when
  absent), like Caddy's internal certificates: every listener and every SNI
  certificate is then trusted through one ``ca.crt``, the same one that
  ``gateway certs generate`` writes.
- Files are created with their final mode (keys 0600, certificates 0644)
  before a byte is written, and an existing file is never replaced without
  ``force``.  Every target is checked before the first one is written, so a
  refusal writes nothing at all.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import os
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 397
DEFAULT_HOSTS = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "::1")
DEFAULT_NAME = "gateway"
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
KEY_MODE = 0o600
CERT_MODE = 0o644

# Backdating not_valid_before absorbs small clock differences between the
# machine that generates and the one that verifies.
_BACKDATE = datetime.timedelta(minutes=5)
_MAX_COMMON_NAME = 64  # X.520 upper bound, enforced by cryptography
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PrivateKey = ec.EllipticCurvePrivateKey


class CertificateError(Exception):
    """A problem with certificate files or names, as a one-line readable message."""


# --- names -------------------------------------------------------------------


def normalize_host(name: str) -> str:
    """*name* as a subjectAltName DNS entry: lower case, A-labels, no trailing dot.

    A leading ``*.`` label (a wildcard) is kept.  Raises :class:`CertificateError`.
    """
    text = name.strip().rstrip(".").lower()
    labels = text.split(".") if text else []
    if not labels:
        raise CertificateError(f"{name!r} is not a host name")
    wildcard = labels[0] == "*"
    if wildcard:
        labels = labels[1:]
        if len(labels) < 2:
            raise CertificateError(f"{name!r}: a wildcard needs at least two labels after '*.'")
    try:
        labels = [label.encode("idna").decode("ascii") for label in labels]
    except UnicodeError:
        raise CertificateError(f"{name!r} is not a host name") from None
    if not all(_DNS_LABEL.match(label) for label in labels):
        raise CertificateError(f"{name!r} is not a host name (letters, digits, '-' and '.' only)")
    result = ".".join((["*"] if wildcard else []) + labels)
    if len(result) > 253:
        raise CertificateError(f"{name!r} is longer than 253 characters")
    return result


def parse_ip(address: str | IPAddress) -> IPAddress:
    """*address* as an IP address object; raises :class:`CertificateError`."""
    if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return address
    try:
        return ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        raise CertificateError(f"{address!r} is not an IP address") from None


def _is_ip(text: str) -> bool:
    try:
        parse_ip(text)
    except CertificateError:
        return False
    return True


@dataclass(frozen=True)
class SubjectNames:
    """The names a server certificate is for, in order, without duplicates.

    Host arguments that are IP addresses (``--host 10.0.0.5``) go with the
    IPs: a DNS entry "10.0.0.5" would never match a connection to that IP.
    """

    hosts: tuple[str, ...]
    ips: tuple[IPAddress, ...]

    @classmethod
    def parse(cls, hosts: Iterable[str] = (), ips: Iterable[str | IPAddress] = ()) -> SubjectNames:
        """Names from user input; both empty: localhost, 127.0.0.1 and ::1."""
        hosts, ips = list(hosts), list(ips)
        if not hosts and not ips:
            hosts, ips = list(DEFAULT_HOSTS), list(DEFAULT_IPS)
        dns_names = [normalize_host(host) for host in hosts if not _is_ip(host)]
        addresses = [parse_ip(ip) for ip in [*(host for host in hosts if _is_ip(host)), *ips]]
        return cls(tuple(dict.fromkeys(dns_names)), tuple(dict.fromkeys(addresses)))

    @property
    def common_name(self) -> str:
        """The first host (or, with no host, the first IP): the certificate's CN."""
        return self.hosts[0] if self.hosts else str(self.ips[0])

    def general_names(self) -> list[x509.GeneralName]:
        return ([x509.DNSName(host) for host in self.hosts]
                + [x509.IPAddress(ip) for ip in self.ips])

    def __str__(self) -> str:
        return ", ".join([*self.hosts, *(str(ip) for ip in self.ips)])


# --- building certificates ---------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def generate_private_key() -> PrivateKey:
    """A new ECDSA P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gateway")]
    if len(common_name) <= _MAX_COMMON_NAME:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False,
               crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=key_cert_sign, crl_sign=crl_sign,
                         encipher_only=False, decipher_only=False)


def _builder(subject: x509.Name, issuer: x509.Name, key: PrivateKey, not_before: datetime.datetime,
             not_after: datetime.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))


def _check_days(days: int) -> None:
    if days < 1:
        raise CertificateError(f"days must be at least 1, got {days}")


def generate_ca(*, common_name: str | None = None, days: int = CA_DAYS,
                now: datetime.datetime | None = None) -> tuple[x509.Certificate, PrivateKey]:
    """A new local certificate authority: (certificate, key).

    ``pathlen:0`` limits it to signing server certificates.  The default
    common name carries the machine's name and the date, so that several
    such CAs in one browser's trust store can be told apart.
    """
    _check_days(days)
    now = now or _now()
    key = generate_private_key()
    name = _name(common_name or f"gateway local CA {socket.gethostname()[:24]} {now:%Y-%m-%d %H:%M}")
    cert = (_builder(name, name, key, now - _BACKDATE, now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _server_builder(names: SubjectNames, issuer: x509.Name, key: PrivateKey,
                    not_before: datetime.datetime, not_after: datetime.datetime) -> x509.CertificateBuilder:
    subject = _name(names.common_name)
    return (_builder(subject, issuer, key, not_before, not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names.general_names()), critical=False))


def generate_server_certificate(ca_cert: x509.Certificate, ca_key: PrivateKey,
                                hosts: Sequence[str] = (), ips: Sequence[str | IPAddress] = (), *,
                                days: int = SERVER_DAYS, now: datetime.datetime | None = None,
                                ) -> tuple[x509.Certificate, PrivateKey]:
    """A new server certificate for *hosts* and *ips*, signed by the CA: (certificate, key).

    With neither hosts nor IPs: localhost, 127.0.0.1 and ::1.  The
    certificate never outlives its CA (a verifier would reject it from then
    on anyway).
    """
    _check_days(days)
    names = SubjectNames.parse(hosts, ips)
    now = now or _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    key = generate_private_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (_server_builder(names, ca_cert.subject, key, now - _BACKDATE, not_after)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def generate_self_signed(hosts: Sequence[str] = (), ips: Sequence[str | IPAddress] = (), *,
                         days: int = SERVER_DAYS, now: datetime.datetime | None = None,
                         ) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed server certificate (its own trust anchor): (certificate, key).

    It is shaped like any server certificate (``CA:FALSE``, digitalSignature,
    serverAuth); see the module docstring for why that verifies.
    """
    _check_days(days)
    names = SubjectNames.parse(hosts, ips)
    now = now or _now()
    key = generate_private_key()
    subject = _name(names.common_name)
    cert = (_server_builder(names, subject, key, now - _BACKDATE, now + datetime.timedelta(days=days))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


# --- PEM and files -----------------------------------------------------------


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8: the gateway starts unattended, so no passphrase."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class _Output:
    path: str
    data: bytes
    mode: int


def _refuse_existing(paths: Iterable[str]) -> None:
    for path in paths:
        if os.path.lexists(path):
            raise CertificateError(f"{path} already exists (use --force to replace it)")


def _create(path: str, data: bytes, mode: int, *, exclusive: bool) -> None:
    """Write *data* to a new file that has *mode* before any byte is in it.

    The explicit fchmod makes the mode independent of the umask; it runs on
    the empty file, so a key is never readable by others, not even briefly.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(path: str, data: bytes, mode: int) -> None:
    """Replace *path* through a new file renamed over it: the new file gets *mode*
    (an existing file's looser mode is not inherited) and readers never see half a file."""
    temporary = os.path.join(os.path.dirname(path) or ".",
                             f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        _create(temporary, data, mode, exclusive=True)
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise


def _write_all(outputs: Sequence[_Output], *, force: bool) -> None:
    """Write every output, or (without *force*, when one exists) none.

    The check comes first; ``O_EXCL`` then also catches a file that appeared
    since, and whatever this call created is removed again on failure.
    """
    if not force:
        _refuse_existing(output.path for output in outputs)
    created: list[str] = []
    path = ""
    try:
        for output in outputs:
            path = output.path
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            if force:
                _replace(output.path, output.data, output.mode)
            else:
                _create(output.path, output.data, output.mode, exclusive=True)
                created.append(output.path)
    except FileExistsError as error:
        _remove(created)
        raise CertificateError(f"{error.filename} already exists (use --force to replace it)") from None
    except OSError as error:
        _remove(created)
        raise CertificateError(f"cannot write {error.filename or path}: {error.strerror}") from None


def _remove(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise CertificateError(f"cannot read {path}: {error.strerror}") from None


def load_certificates(path: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file (or the one in a DER file); raises :class:`CertificateError`."""
    data = _read(path)
    if b"-----BEGIN" in data:
        if b"-----BEGIN CERTIFICATE-----" not in data:
            kind = "a private key" if b"PRIVATE KEY-----" in data else "PEM data"
            raise CertificateError(f"{path}: not a certificate (found {kind})")
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError as error:
            raise CertificateError(f"{path}: not a valid PEM certificate ({error})") from None
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CertificateError(f"{path}: not a certificate (neither PEM nor DER)") from None


def load_certificate(path: str) -> x509.Certificate:
    """The first certificate of a PEM or DER file."""
    return load_certificates(path)[0]


def load_private_key(path: str) -> PrivateKey:
    """An unencrypted PEM private key; raises :class:`CertificateError`."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise CertificateError(f"{path}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path}: expected an ECDSA key, found {key_description(key.public_key())}")
    return key


# --- the local CA on disk ----------------------------------------------------


def local_ca_paths(directory: str) -> tuple[str, str]:
    """(certificate, key) paths of the local CA kept in *directory*."""
    return os.path.join(directory, CA_CERT_FILE), os.path.join(directory, CA_KEY_FILE)


def _public_bytes(key: PrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_ca(directory: str, now: datetime.datetime | None = None,
            ) -> tuple[x509.Certificate, PrivateKey] | None:
    """The local CA in *directory*, or None when neither of its files exists.

    Refuses half a CA, a key that does not belong to the certificate, a
    certificate that is not a CA, and an expired CA.
    """
    cert_path, key_path = local_ca_paths(directory)
    have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
    if not have_cert and not have_key:
        return None
    if have_cert != have_key:
        present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise CertificateError(f"{present} exists but {missing} does not: "
                               f"restore it, or delete {present} to create a new CA")
    cert, key = load_certificate(cert_path), load_private_key(key_path)
    if _public_bytes(key) != _public_bytes(cert.public_key()):
        raise CertificateError(f"{key_path} is not the key of {cert_path}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateError(f"{cert_path} is not a CA certificate")
    if cert.not_valid_after_utc <= (now or _now()):
        raise CertificateError(f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: "
                               f"delete {cert_path} and {key_path} to create a new CA")
    return cert, key


# --- what the CLI and the start-up call --------------------------------------


@dataclass(frozen=True)
class GeneratedFiles:
    """What :func:`generate_files` did, for the caller to report."""

    cert_path: str
    key_path: str
    certificate: x509.Certificate
    names: SubjectNames
    ca_cert_path: str | None = None  # None: self-signed
    ca_created: bool = False
    written: tuple[str, ...] = field(default=())


def _check_file_name(name: str) -> None:
    if not _FILE_NAME.match(name) or name in ("ca", ".", ".."):
        raise CertificateError(f"{name!r} cannot name certificate files "
                               "(letters, digits, '.', '_' and '-'; not 'ca')")


def generate_files(out_dir: str, hosts: Sequence[str] = (), ips: Sequence[str] = (), *,
                   name: str = DEFAULT_NAME, days: int = SERVER_DAYS, force: bool = False,
                   self_signed: bool = False) -> GeneratedFiles:
    """``gateway certs generate``: NAME.crt/NAME.key in *out_dir*, signed by the local CA there.

    The CA is reused when present and created otherwise; *force* replaces
    NAME.crt/NAME.key but never the CA.  *self_signed* makes a self-signed
    pair and leaves any CA alone.
    """
    _check_file_name(name)
    _check_days(days)
    names = SubjectNames.parse(hosts, ips)
    cert_path, key_path = os.path.join(out_dir, f"{name}.crt"), os.path.join(out_dir, f"{name}.key")
    if self_signed:
        return _write_self_signed(cert_path, key_path, names, days=days, force=force)
    return _write_ca_signed(cert_path, key_path, names, ca_dir=out_dir, days=days, force=force)


def _write_self_signed(cert_path: str, key_path: str, names: SubjectNames, *, days: int,
                       force: bool) -> GeneratedFiles:
    if not force:
        _refuse_existing([cert_path, key_path])
    cert, key = generate_self_signed(names.hosts, names.ips, days=days)
    _write_all([_Output(key_path, private_key_pem(key), KEY_MODE),
                _Output(cert_path, certificate_pem(cert), CERT_MODE)], force=force)
    return GeneratedFiles(cert_path, key_path, cert, names, written=(cert_path, key_path))


def _write_ca_signed(cert_path: str, key_path: str, names: SubjectNames, *, ca_dir: str, days: int,
                     force: bool) -> GeneratedFiles:
    ca_cert_path, ca_key_path = local_ca_paths(ca_dir)
    ca_files = {os.path.abspath(ca_cert_path), os.path.abspath(ca_key_path)}
    for path in (cert_path, key_path):
        if os.path.abspath(path) in ca_files:
            raise CertificateError(f"{path} is a file of the local CA")
    if not force:  # before the (slow-ish) key generation, and before any CA is created
        _refuse_existing([cert_path, key_path])
    loaded = load_ca(ca_dir)
    outputs: list[_Output] = []
    if loaded is None:
        ca_cert, ca_key = generate_ca()
        outputs += [_Output(ca_key_path, private_key_pem(ca_key), KEY_MODE),
                    _Output(ca_cert_path, certificate_pem(ca_cert), CERT_MODE)]
    else:
        ca_cert, ca_key = loaded
    cert, key = generate_server_certificate(ca_cert, ca_key, names.hosts, names.ips, days=days)
    if outputs:  # a new CA: exclusive whatever force says, so a CA is never replaced
        _write_all(outputs, force=False)
    try:
        _write_all([_Output(key_path, private_key_pem(key), KEY_MODE),
                    _Output(cert_path, certificate_pem(cert), CERT_MODE)], force=force)
    except CertificateError:
        _remove(output.path for output in outputs)  # a CA that signed nothing on disk
        raise
    written = tuple(output.path for output in outputs) + (cert_path, key_path)
    return GeneratedFiles(cert_path, key_path, cert, names, ca_cert_path=ca_cert_path,
                          ca_created=bool(outputs), written=written)


def ensure_self_signed(cert_path: str, key_path: str, hosts: Sequence[str] = DEFAULT_HOSTS,
                       ips: Sequence[str] = DEFAULT_IPS) -> bool:
    """Create *cert_path* and *key_path* when both are absent; True if it did.

    For ``self_signed: true`` at start-up.  The certificate is signed by the
    local CA beside it (``ca.crt``/``ca.key`` in the certificate's directory,
    reused when present, created when not), so that clients trust every
    generated certificate through that one ``ca.crt``; see
    :func:`local_ca_paths` to log where it is.  Both files present: nothing
    to do (False).  Only one present: :class:`CertificateError`, since
    replacing the other would break the pair.  Blocking: call it before the
    reactor runs.
    """
    have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
    if have_cert and have_key:
        return False
    if have_cert or have_key:
        present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise CertificateError(f"{present} exists but {missing} does not: "
                               "self_signed only generates a missing pair")
    names = SubjectNames.parse(hosts, ips)
    _write_ca_signed(cert_path, key_path, names, ca_dir=os.path.dirname(cert_path) or ".",
                     days=SERVER_DAYS, force=False)
    return True


# --- describing --------------------------------------------------------------


def key_description(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(public_key.curve.name)
        return f"ECDSA {curve} ({public_key.curve.name})" if curve else f"ECDSA {public_key.curve.name}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size} bits"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA {public_key.key_size} bits"
    return type(public_key).__name__


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    """``DNS:name`` and ``IP:address`` entries (others by their type), in order."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    entries = []
    for general_name in names:
        if isinstance(general_name, x509.DNSName):
            entries.append(f"DNS:{general_name.value}")
        elif isinstance(general_name, x509.IPAddress):
            entries.append(f"IP:{general_name.value}")
        else:
            entries.append(f"{type(general_name).__name__}:{general_name.value}")
    return entries


def validity_status(cert: x509.Certificate, now: datetime.datetime | None = None) -> str:
    """``"EXPIRED 3 days ago"``, ``"not yet valid"`` or ``"397 days left"``.

    Days left are rounded up, so a certificate made for 397 days shows 397.
    """
    now = now or _now()
    if cert.not_valid_after_utc <= now:
        days = (now - cert.not_valid_after_utc).days
        return f"EXPIRED {days} day{'' if days == 1 else 's'} ago" if days else "EXPIRED less than a day ago"
    if cert.not_valid_before_utc > now:
        return "not yet valid"
    days = math.ceil((cert.not_valid_after_utc - now) / datetime.timedelta(days=1))
    return f"{days} day{'' if days == 1 else 's'} left"


def is_expired(cert: x509.Certificate, now: datetime.datetime | None = None) -> bool:
    return cert.not_valid_after_utc <= (now or _now())


def _signed_by_itself(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _describe_one(cert: x509.Certificate, now: datetime.datetime) -> list[str]:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        ca = "yes" if constraints.ca else "no"
    except x509.ExtensionNotFound:
        ca = "no (no basicConstraints)"
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    issuer = "(self-signed)" if _signed_by_itself(cert) else cert.issuer.rfc4514_string()
    return [
        f"subject:     {cert.subject.rfc4514_string() or '(empty)'}",
        f"SANs:        {', '.join(subject_alt_names(cert)) or '(none)'}",
        f"issuer:      {issuer}",
        f"not before:  {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
        f"not after:   {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC ({validity_status(cert, now)})",
        f"key:         {key_description(cert.public_key())}",
        f"CA:          {ca}",
        f"serial:      {cert.serial_number:x}",
        f"sha256:      {fingerprint}",
    ]


def describe_certificate(path: str, now: datetime.datetime | None = None) -> str:
    """A readable summary of every certificate in *path*; raises :class:`CertificateError`."""
    now = now or _now()
    certs = load_certificates(path)
    blocks = []
    for index, cert in enumerate(certs):
        header = f"{path}" if len(certs) == 1 else f"{path} [{index + 1}/{len(certs)}]"
        blocks.append("\n".join([header, *("  " + line for line in _describe_one(cert, now))]))
    return "\n\n".join(blocks)
