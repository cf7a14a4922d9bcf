"""gateway.tls_tickets: session tickets issued by one context resumed by another that shares its keys.

Each test plays whole TLS handshakes between Python's ``ssl`` client and
the gateway's own ``ServerTLS`` contexts over memory BIOs (no sockets): a
first connection to one server gets a session ticket, a second connection
offers it to another server, built apart as another worker's would be.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from twisted.logger import LogLevel, globalLogPublisher

from gateway import tls_tickets
from gateway.core.config import TLSConfig
from gateway.tls import ServerTLS
from gateway.tls_tickets import (
    TICKET_KEYS_LENGTH,
    SharedTicketKeys,
    TicketKeysUnavailable,
    new_ticket_keys,
    set_ticket_keys,
)
from protocol_harness import write_tls_files

VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]
MAX_ROUNDS = 20  # handshake round trips before a test gives up


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, TLSConfig]:
    return write_tls_files(tmp_path_factory.mktemp("tickets"))


class Client:
    """One verifying client context: Python resumes a session only within the context that made it."""

    def __init__(self, cafile: Path, version: ssl.TLSVersion) -> None:
        self.context = ssl.create_default_context(cafile=str(cafile))
        self.context.minimum_version = self.context.maximum_version = version

    def connect(self, server: ServerTLS, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        """A whole handshake with *server*, then one exchange of data (TLS 1.3 sends tickets after it)."""
        to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = self.context.wrap_bio(to_client, to_server, server_hostname="localhost", session=session)
        server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        server_side = server.wrap(server_in, server_out)

        def pump() -> None:
            server_in.write(to_server.read())
            for step in (server_side.do_handshake, lambda: server_side.read(1024)):
                try:
                    step()
                    break
                except ssl.SSLWantReadError:
                    pass
            to_client.write(server_out.read())

        for _ in range(MAX_ROUNDS):
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
        else:
            raise AssertionError("the handshake did not finish")
        client.write(b"ping")
        pump()
        server_side.write(b"pong")
        to_client.write(server_out.read())
        assert client.read(1024) == b"pong"  # reading also takes in TLS 1.3's session tickets
        return client


@pytest.mark.parametrize("version", VERSIONS, ids=["TLS1.2", "TLS1.3"])
def test_a_ticket_from_one_context_resumes_on_another_with_the_same_keys(files, version) -> None:
    cafile, config = files
    keys = new_ticket_keys()
    one, other = (ServerTLS(config, "test.yaml", SharedTicketKeys(keys)) for _ in range(2))
    client = Client(cafile, version)
    first = client.connect(one)
    assert not first.session_reused
    again = client.connect(other, first.session)
    assert again.session_reused, "the other context could not decrypt the ticket"
    assert client.connect(one, again.session).session_reused


@pytest.mark.parametrize("version", VERSIONS, ids=["TLS1.2", "TLS1.3"])
def test_without_shared_keys_a_ticket_does_not_resume_on_another_context(files, version) -> None:
    """What workers did before: each context's own random keys."""
    cafile, config = files
    one, other = ServerTLS(config, "test.yaml"), ServerTLS(config, "test.yaml")
    client = Client(cafile, version)
    first = client.connect(one)
    assert client.connect(one, first.session).session_reused
    assert not client.connect(other, first.session).session_reused


def test_new_keys_at_a_reload_end_the_old_tickets(files) -> None:
    cafile, config = files
    shared = SharedTicketKeys(new_ticket_keys())
    server = ServerTLS(config, "test.yaml", shared)
    client = Client(cafile, ssl.TLSVersion.TLSv1_3)
    before = client.connect(server)
    shared.keys = new_ticket_keys()
    server.reload()
    after = client.connect(server, before.session)
    assert not after.session_reused, "a ticket made with the keys before the reload was accepted"
    assert client.connect(server, after.session).session_reused


def test_keys_of_the_wrong_length_are_refused() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ValueError, match=str(TICKET_KEYS_LENGTH)):
        set_ticket_keys(context, b"x" * (TICKET_KEYS_LENGTH - 1))


def test_where_keys_cannot_be_set_one_warning_and_the_contexts_still_serve(files, monkeypatch) -> None:
    cafile, config = files

    def unavailable(context: ssl.SSLContext, keys: bytes) -> None:
        raise TicketKeysUnavailable("a Python without ctypes")

    monkeypatch.setattr(tls_tickets, "set_ticket_keys", unavailable)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        shared = SharedTicketKeys(new_ticket_keys())
        server = ServerTLS(config, "test.yaml", shared)
        server.reload()
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [event for event in events if event.get("log_level") == LogLevel.warn
                and event.get("log_namespace") == "gateway.tls"]
    assert len(warnings) == 1, warnings
    assert "a Python without ctypes" in warnings[0]["reason"]
    assert not Client(cafile, ssl.TLSVersion.TLSv1_3).connect(server).session_reused
