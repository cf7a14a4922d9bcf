"""Session-ticket keys shared by the TLS contexts of every worker.

OpenSSL gives each ``SSL_CTX`` random session-ticket keys of its own.  With
``workers: N`` every worker builds its own contexts, and a client that
reconnects lands on whichever worker the kernel picks (one ``SO_REUSEPORT``
socket each): it could resume its session only on the worker that issued
its ticket (measured with two workers: 23 of 40 reconnections resumed,
against 39 of 40 in a single process).  As nginx does, the master makes
one set of keys and every worker puts it on every context, so any worker
decrypts any worker's tickets.  The master makes new keys at each SIGHUP
reload (tickets issued before a reload then get a full handshake, as with
nginx and HAProxy, whose keys are also made anew); a worker restarted after
a crash gets the current keys.

The standard library has no call for ``SSL_CTX_set_tlsext_ticket_keys``,
so it is made through :mod:`ctypes`: CPython keeps the ``SSL_CTX *`` as the
first field after the object header of an ``ssl.SSLContext``, and the
function is looked up in the libssl that the ``_ssl`` module is linked
with.  Before anything is written, the pointer is checked: OpenSSL's
options read through it must be the context's ``options``.  Where any of
this does not hold (another Python implementation, a different layout),
:class:`SharedTicketKeys` logs one warning and the contexts keep keys of
their own: connections work as before, reconnecting clients resume less.
"""

from __future__ import annotations

import ctypes
import functools
import os
import ssl
import sys

from twisted.logger import Logger

log = Logger(namespace="gateway.tls")

#: OpenSSL's ticket key block: a 16-byte key name, a 32-byte HMAC secret and a 32-byte AES key.
TICKET_KEYS_LENGTH = 80
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59


class TicketKeysUnavailable(Exception):
    """This Python cannot set a context's ticket keys (the reason is the message)."""


def new_ticket_keys() -> bytes:
    return os.urandom(TICKET_KEYS_LENGTH)


class _LibSSL:
    """``SSL_CTX_ctrl`` and ``SSL_CTX_get_options`` of the libssl behind the ``ssl`` module."""

    def __init__(self) -> None:
        if sys.implementation.name != "cpython":
            raise TicketKeysUnavailable(f"not CPython ({sys.implementation.name})")
        import _ssl

        try:
            # dlsym on the _ssl module's handle also searches the libraries it is linked with.
            library = ctypes.CDLL(getattr(_ssl, "__file__", None))
            self.ctrl = library.SSL_CTX_ctrl
            self.get_options = library.SSL_CTX_get_options
        except (OSError, AttributeError) as error:
            raise TicketKeysUnavailable(f"OpenSSL's functions not found: {error}") from None
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        self.ctrl.restype = ctypes.c_long
        self.get_options.argtypes = [ctypes.c_void_p]
        self.get_options.restype = ctypes.c_uint64


@functools.cache
def _openssl() -> _LibSSL:
    return _LibSSL()


def set_ticket_keys(context: ssl.SSLContext, keys: bytes) -> None:
    """Make *context* encrypt and decrypt session tickets with *keys* (raises TicketKeysUnavailable)."""
    if len(keys) != TICKET_KEYS_LENGTH:
        raise ValueError(f"ticket keys are {TICKET_KEYS_LENGTH} bytes, not {len(keys)}")
    openssl = _openssl()
    if type(context).__basicsize__ < object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p):
        raise TicketKeysUnavailable("ssl.SSLContext has no room for an SSL_CTX pointer")
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or openssl.get_options(pointer) != context.options:
        raise TicketKeysUnavailable("the SSL_CTX of an ssl.SSLContext is not where CPython keeps it")
    if openssl.ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, len(keys), keys) != 1:
        raise TicketKeysUnavailable("OpenSSL refused the ticket keys")


class SharedTicketKeys:
    """The ticket keys every TLS context of this process gets: the master's, in a worker."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self._warned = False

    def apply_to(self, context: ssl.SSLContext) -> None:
        try:
            set_ticket_keys(context, self.keys)
        except TicketKeysUnavailable as error:
            if not self._warned:
                self._warned = True
                log.warn("TLS session tickets cannot be shared between workers here ({reason}): a reconnecting "
                         "client resumes its session only on the worker that issued its ticket", reason=str(error))
