"""The backend-facing HTTP/1.1 client protocol, alone, on an in-memory transport."""

from __future__ import annotations

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from gateway.core.headers import downstream_response_head
from gateway.core.messages import CHUNKED, FIXED_LENGTH, NO_BODY, UNTIL_CLOSE
from gateway.http.client import HTTP11ClientProtocol, response_framing
from protocol_harness import FakeTransport

REQUEST = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


class Handler:
    """Records what the connection reports, as a list of events."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def response_head(self, status, reason, headers, body, content_length):
        self.events.append(("head", status, reason, headers, body, content_length))

    def response_body(self, data):
        self.events.append(("body", data))

    def response_finished(self, connection, reusable):
        self.events.append(("finished", reusable))

    def upstream_lost(self, connection, reason):
        self.events.append(("lost", reason if isinstance(reason, str) else reason.type))

    @property
    def body(self) -> bytes:
        return b"".join(event[1] for event in self.events if event[0] == "body")

    @property
    def kinds(self) -> list[str]:
        return [event[0] for event in self.events]


class Connection:
    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.protocol = HTTP11ClientProtocol()
        self.ready = []
        self.protocol.connected_handler = self.ready.append
        address = IPv4Address("TCP", "127.0.0.1", 9001)
        self.transport = FakeTransport(self.reactor, self.protocol, address, IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)

    def request(self, head: bytes = REQUEST, head_request: bool = False, chunked: bool = False) -> Handler:
        handler = Handler()
        self.protocol.send_request(handler, head, head_request, chunked)
        return handler

    def feed(self, data: bytes, one_byte_at_a_time: bool = False) -> None:
        if one_byte_at_a_time:
            for index in range(len(data)):
                self.protocol.dataReceived(data[index:index + 1])
        else:
            self.protocol.dataReceived(data)


@pytest.fixture
def conn() -> Connection:
    return Connection()


# -- response_framing: RFC 9112 section 6.3 ------------------------------------------------------


@pytest.mark.parametrize("status, headers, head_request, expected", [
    (200, [(b"Content-Length", b"12")], False, (FIXED_LENGTH, 12)),
    (200, [(b"content-length", b"0")], False, (FIXED_LENGTH, 0)),
    (200, [(b"Transfer-Encoding", b"chunked")], False, (CHUNKED, None)),
    (200, [(b"Transfer-Encoding", b"gzip, Chunked")], False, (CHUNKED, None)),
    (200, [(b"Transfer-Encoding", b"chunked, gzip")], False, (UNTIL_CLOSE, None)),
    (200, [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")], False, (CHUNKED, None)),
    (200, [], False, (UNTIL_CLOSE, None)),
    (200, [(b"Content-Length", b"12")], True, (NO_BODY, 12)),
    (200, [(b"Transfer-Encoding", b"chunked")], True, (NO_BODY, None)),
    (204, [], False, (NO_BODY, None)),
    (304, [(b"Content-Length", b"99")], False, (NO_BODY, 99)),
    (100, [], False, (NO_BODY, None)),
    (103, [(b"Link", b"</s.css>")], False, (NO_BODY, None)),
    (404, [(b"Content-Length", b"3")], False, (FIXED_LENGTH, 3)),
])
def test_response_framing(status, headers, head_request, expected):
    _, content_length, chunked = downstream_response_head(headers)
    framing = response_framing(status, content_length, chunked, head_request)
    assert (framing, None if framing == CHUNKED else content_length) == expected


# -- the connection ----------------------------------------------------------------------


def test_connection_made_reports_ready(conn):
    assert conn.ready == [conn.protocol]
    assert conn.protocol.connected_handler is None
    assert conn.transport.no_delay
    assert conn.protocol.gate is not None


def test_request_head_and_body_written_as_given(conn):
    conn.request(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
    conn.protocol.write_body(b"hel")
    conn.protocol.write_body(b"lo")
    conn.protocol.end_body()
    assert conn.transport.take() == b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    assert conn.protocol.requests_sent == 1


def test_chunked_request_body_framed(conn):
    conn.request(b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", chunked=True)
    conn.transport.take()
    conn.protocol.write_body(b"hello")
    conn.protocol.write_body(b"x" * 26)
    conn.protocol.end_body()
    assert conn.transport.take() == b"5\r\nhello\r\n1a\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte by byte"])
def test_content_length_response(conn, split):
    handler = conn.request()
    conn.feed(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello", one_byte_at_a_time=split)
    assert handler.events[0] == ("head", 200, b"OK", b"X-A: 1\r\n", FIXED_LENGTH, 5)
    assert handler.body == b"hello"
    assert handler.events[-1] == ("finished", True)
    assert conn.protocol.handler is None


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte by byte"])
def test_chunked_response(conn, split):
    handler = conn.request()
    conn.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
              one_byte_at_a_time=split)
    assert handler.events[0][4] == CHUNKED
    assert handler.body == b"hello world"
    assert handler.kinds.count("finished") == 1
    assert handler.events[-1] == ("finished", True)


@pytest.mark.parametrize("response, reusable", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
])
def test_reusability_follows_the_response(conn, response, reusable):
    handler = conn.request()
    conn.feed(response)
    assert handler.events[-1] == ("finished", reusable)


def test_head_response_finishes_without_a_body(conn):
    handler = conn.request(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", head_request=True)
    conn.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    assert handler.kinds == ["head", "finished"]
    assert handler.events[0][4:] == (NO_BODY, 100)
    assert handler.events[-1] == ("finished", True)
    # the next response on the connection is parsed afresh
    second = conn.request()
    conn.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert second.body == b"ok" and second.events[-1] == ("finished", True)
    assert conn.protocol.requests_sent == 2


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
])
def test_bodiless_statuses_finish_at_the_head(conn, response):
    handler = conn.request()
    conn.feed(response)
    assert handler.kinds == ["head", "finished"]
    assert handler.events[-1] == ("finished", True)
    second = conn.request()
    conn.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert second.body == b"ok" and second.events[-1] == ("finished", True)


def test_the_parser_is_reused_after_a_complete_response_only(conn):
    conn.request()
    conn.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    parser = conn.protocol._parser
    conn.request()
    assert conn.protocol._parser is parser  # at the start of the next message: no new one needed
    conn.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    head = conn.request(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", head_request=True)
    # (an interim response, which llhttp ends itself, then the final one, which it does not)
    conn.feed(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")  # llhttp still waits for 100 bytes
    assert head.events[-1] == ("finished", True)
    last = conn.request()
    assert conn.protocol._parser is not parser
    conn.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert last.body == b"ok" and last.events[-1] == ("finished", True)


def test_interim_responses_are_skipped(conn):
    handler = conn.request()
    conn.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
    assert handler.events == []
    conn.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-A: 1\r\n\r\nx")
    assert handler.events[0][1] == 200 and handler.events[-1] == ("finished", True)
    assert handler.events[0][2:4] == (b"OK", b"X-A: 1\r\n")  # nothing of the interim responses' heads


def test_close_delimited_response_finishes_on_close(conn):
    handler = conn.request()
    conn.feed(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
    conn.feed(b"part two")
    assert handler.kinds == ["head", "body", "body"]
    assert handler.events[0][4] == UNTIL_CLOSE
    conn.transport.peer_closes()
    assert handler.events[-1] == ("finished", False)
    assert handler.body == b"part one, part two"


@pytest.mark.parametrize("partial", [
    b"",
    b"HTTP/1.1 200 OK\r\nContent-Len",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
])
def test_close_before_the_response_is_complete_is_lost(conn, partial):
    handler = conn.request()
    conn.feed(partial)
    conn.transport.peer_closes(error.ConnectionLost())
    assert handler.events[-1] == ("lost", error.ConnectionLost)
    assert "finished" not in handler.kinds


def test_response_started_flag(conn):
    conn.request()
    assert not conn.protocol.response_started
    conn.feed(b"H")
    assert conn.protocol.response_started
    conn.feed(b"TTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    conn.request()
    assert not conn.protocol.response_started


@pytest.mark.parametrize("garbage", [
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_invalid_response_is_reported_once_and_aborts(conn, garbage):
    handler = conn.request()
    conn.feed(garbage)
    assert handler.kinds[-1] == "lost"
    assert isinstance(handler.events[-1][1], str) and "invalid response" in handler.events[-1][1]
    assert conn.transport.aborted
    conn.reactor.advance(0)  # connectionLost arrives: nothing more is reported
    assert handler.kinds.count("lost") == 1


def test_unsolicited_data_on_an_idle_connection_aborts_it(conn):
    lost = []
    conn.protocol.on_idle_lost = lost.append
    conn.feed(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert conn.transport.aborted
    conn.reactor.advance(0)
    assert lost == [conn.protocol]


def test_idle_connection_lost_reports_to_the_pool(conn):
    lost = []
    conn.protocol.on_idle_lost = lost.append
    conn.transport.peer_closes()
    assert lost == [conn.protocol]
    assert conn.reactor.getDelayedCalls() == []


def test_abort_drops_the_handler(conn):
    handler = conn.request()
    conn.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    conn.protocol.abort()
    assert conn.transport.aborted
    conn.reactor.advance(0)
    assert handler.kinds == ["head", "body"]


def test_many_requests_on_one_connection(conn):
    for index in range(5):
        handler = conn.request(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % index)
        assert conn.transport.take() == b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % index
        body = b"r%d" % index
        conn.feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert handler.body == body and handler.events[-1] == ("finished", True)
    assert conn.protocol.requests_sent == 5
