"""TLS termination: the contexts of a listener (``ssl.SSLContext``), chosen per connection by SNI.

One ``ssl.SSLContext`` is built per configured certificate, once, and reused for
every connection.  The first certificate is the default; a client's SNI name
switches the connection to the certificate whose subjectAltNames match it
(``*.example.com`` wildcards included).

Settings: TLS 1.2 or newer, forward-secret AEAD ciphers only, no
compression, no renegotiation, ALPN ``http/1.1``.  Unlike Twisted's
``CertificateOptions`` (which turns them off), session tickets and the
server session cache stay on (OpenSSL's defaults, which Python keeps), so
reconnecting clients resume instead of paying a full handshake.  With
``workers: N`` every context gets the master's ticket keys
(:mod:`gateway.tls_tickets`), so a client resumes on any worker.
:meth:`ServerTLS.reload` rebuilds the contexts from the files (SIGHUP);
connections already open keep the context they started with.

The standard library's ``ssl`` rather than pyOpenSSL: see
:mod:`gateway.http.tls_transport` for why.
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from twisted.logger import Logger

from gateway.core.config import ConfigError, TLSConfig
from gateway.tls_tickets import SharedTicketKeys

log = Logger(namespace="gateway.tls")

_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# TLS 1.2 suites: ECDHE key exchange (forward secrecy) with AEAD encryption only.
# TLS 1.3 suites are all forward-secret AEAD and need no list.
_TLS12_CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" \
                 "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"


@dataclass(frozen=True)
class LoadedCertificate:
    context: ssl.SSLContext
    names: tuple[str, ...]  # lower-case DNS names and IP addresses from the SANs (or the CN)
    not_after: datetime.datetime


def certificate_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """The names a certificate is valid for: its SANs, or its common name when it has none."""
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [name.lower() for name in sans.get_values_for_type(x509.DNSName)]
        names += [str(address) for address in sans.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = [str(attribute.value).lower()
                 for attribute in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return tuple(names)


def name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 matching: exact, or a ``*.`` wildcard standing for exactly one leftmost label."""
    if pattern == name:
        return True
    if pattern.startswith("*."):
        first, dot, rest = name.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return False


def load_certificate(cert_path: str, key_path: str, min_version: str, source: str) -> LoadedCertificate:
    """Build the context for one certificate; raise ConfigError naming the file when it is unusable."""
    for path in (cert_path, key_path):
        if not os.access(path, os.R_OK):
            reason = "does not exist" if not os.path.exists(path) else "is not readable"
            raise ConfigError(f"{source}: TLS file {path} {reason}")
    try:
        with open(cert_path, "rb") as stream:
            certificate = x509.load_pem_x509_certificate(stream.read())
    except OSError as error:
        raise ConfigError(f"{source}: cannot read the certificate {cert_path}: {error.strerror}") from None
    except ValueError as error:
        raise ConfigError(f"{source}: {cert_path} is not a PEM certificate: {error}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MIN_VERSIONS[min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_ciphers(_TLS12_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])  # no overlap with the client's list: no ALPN, as nginx
    try:
        context.load_cert_chain(cert_path, key_path)  # checks that the key matches
    except ssl.SSLError as error:
        raise ConfigError(f"{source}: the key {key_path} does not match the certificate {cert_path} "
                          f"or cannot be used ({error.reason or error})") from None
    except OSError as error:
        raise ConfigError(f"{source}: cannot read {cert_path} or {key_path}: {error.strerror}") from None
    return LoadedCertificate(context=context, names=certificate_names(certificate),
                             not_after=certificate.not_valid_after_utc)


class ServerTLS:
    """The TLS side of one listener: starts the TLS session of each client connection."""

    def __init__(self, config: TLSConfig, source: str, ticket_keys: SharedTicketKeys | None = None) -> None:
        self._config = config
        self._source = source
        self._ticket_keys = ticket_keys  # None: OpenSSL's own keys, per context
        self._certificates: tuple[LoadedCertificate, ...] = ()
        self.reload()

    def reload(self, config: TLSConfig | None = None) -> None:
        """(Re)load every certificate file; on error keep serving the old ones and raise ConfigError."""
        self.install(self.load(config or self._config))

    def load(self, config: TLSConfig) -> tuple[TLSConfig, tuple[LoadedCertificate, ...]]:
        """Read and check the files of *config* without serving them yet (raises ConfigError)."""
        loaded = tuple(load_certificate(item.cert, item.key, config.min_version, self._source)
                       for item in config.certificates)
        if self._ticket_keys is not None:
            for certificate in loaded:
                self._ticket_keys.apply_to(certificate.context)
        return config, loaded

    def install(self, prepared: tuple[TLSConfig, tuple[LoadedCertificate, ...]]) -> None:
        """Serve certificates prepared by :meth:`load` to new connections."""
        config, loaded = prepared
        now = datetime.datetime.now(datetime.timezone.utc)
        for item, certificate in zip(config.certificates, loaded):
            certificate.context.sni_callback = self._select_certificate
            if certificate.not_after < now:
                log.warn("certificate {path} expired on {date}; clients will refuse it", path=item.cert,
                         date=certificate.not_after.isoformat())
        self._config = config
        self._certificates = loaded

    def certificate_for(self, server_name: str | None) -> LoadedCertificate:
        """The certificate for an SNI name: the first whose SANs match, else the first one."""
        if server_name:
            name = server_name.lower().rstrip(".")
            for certificate in self._certificates:
                if any(name_matches(pattern, name) for pattern in certificate.names):
                    return certificate
        return self._certificates[0]

    def _select_certificate(self, connection: ssl.SSLObject, server_name: str | None,
                            context: ssl.SSLContext) -> None:
        if server_name:
            chosen = self.certificate_for(server_name)
            if chosen.context is not context:
                connection.context = chosen.context

    def wrap(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> ssl.SSLObject:
        """The server side of a new TLS session over these memory BIOs (the default certificate until SNI)."""
        return self._certificates[0].context.wrap_bio(incoming, outgoing, server_side=True)
