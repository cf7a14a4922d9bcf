"""The client-facing HTTP/1.1 protocol driving whole exchanges, on in-memory transports.

Each test plays both ends by hand: the client's bytes into the gateway's
server protocol, and the backend's bytes into the gateway's client protocol
once the proxy has asked the (memory) reactor for a connection.
"""

from __future__ import annotations

import pytest
from twisted.internet import error

from gateway.http.proxy import CONNECT_BUFFER_LIMIT
from protocol_harness import CONFIG, Gateway, parse_request_head, parse_responses

OK_5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
API = ("127.0.0.1", 9001)


@pytest.fixture
def gw() -> Gateway:
    return Gateway()


def get(path: str = "/api/users", host: bytes = b"example.com", version: bytes = b"1.1", extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/%s\r\nHost: %s\r\n%s\r\n" % (path.encode(), version, host, extra)


def forwarded_request(gw: Gateway, client, data: bytes):
    """Send *data*, accept the backend connection, return it with the request it got."""
    client.send(data)
    backend = gw.accept_backend()
    return backend, backend.request()


# -- forwarding a request and relaying the response -----------------------------------------


def test_get_forwarded_with_the_right_head_and_response_relayed(gw):
    client = gw.client(ip="10.9.8.7")
    client.send(b"GET /api/users?page=2 HTTP/1.1\r\n"
                b"Host: Example.com:8080\r\n"
                b"User-Agent: curl/8.5.0\r\n"
                b"Accept: */*\r\n"
                b"Connection: keep-alive, X-Hop\r\n"
                b"Keep-Alive: timeout=5\r\n"
                b"X-Hop: secret\r\n"
                b"TE: trailers\r\n"
                b"Proxy-Authorization: Basic eDp5\r\n"
                b"X-Forwarded-For: 203.0.113.1\r\n"
                b"X-Forwarded-Proto: https\r\n"
                b"\r\n")
    assert gw.connect_attempts == [API]
    backend = gw.accept_backend()
    assert backend.request() == (
        b"GET /api/users?page=2 HTTP/1.1\r\n"
        b"Host: Example.com:8080\r\n"
        b"User-Agent: curl/8.5.0\r\n"
        b"Accept: */*\r\n"
        b"X-Forwarded-For: 203.0.113.1, 10.9.8.7\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: Example.com:8080\r\n"
        b"\r\n")
    assert client.received() == b""
    backend.reply(b"HTTP/1.1 200 OK\r\n"
                  b"Content-Type: application/json\r\n"
                  b"Connection: keep-alive\r\n"
                  b"Keep-Alive: timeout=2\r\n"
                  b"X-Served-By: api-1\r\n"
                  b"Content-Length: 11\r\n"
                  b"\r\n"
                  b'{"ok": true')
    assert client.take() == (b"HTTP/1.1 200 OK\r\n"
                             b"Content-Type: application/json\r\n"
                             b"X-Served-By: api-1\r\n"
                             b"Content-Length: 11\r\n"
                             b"\r\n"
                             b'{"ok": true')
    assert not client.closed
    assert client.transport.no_delay and backend.transport.no_delay


def test_access_log_record(gw):
    gw.reactor.advance(100)
    client = gw.client(ip="10.1.1.1")
    backend, _ = forwarded_request(gw, client, get(extra=b"User-Agent: ua\r\nReferer: http://r/\r\n"))
    gw.reactor.advance(0.25)
    backend.reply(OK_5)
    ((record, finished),) = gw.access_log
    assert (record.client_ip, record.request_line, record.status, record.body_bytes) == (
        "10.1.1.1", "GET /api/users HTTP/1.1", 200, 5)
    assert (record.user_agent, record.referer, record.upstream) == ("ua", "http://r/", "127.0.0.1:9001")
    assert record.started == 100
    assert finished == pytest.approx(100.25)
    assert record.upstream_time == pytest.approx(0.25)


def test_strip_prefix_route_rewrites_the_target(gw):
    client = gw.client()
    backend, request = forwarded_request(gw, client, get("/strip/users/42?x=1&y=2"))
    assert request.startswith(b"GET /users/42?x=1&y=2 HTTP/1.1\r\n")
    backend.reply(OK_5)
    client.send(get("/strip"))
    assert backend.request().startswith(b"GET / HTTP/1.1\r\n")


def test_content_length_response_relayed(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(b"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\n01234")
    assert client.take() == b"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\n01234"
    backend.reply(b"56789")
    assert client.take() == b"56789"
    assert not client.closed


def test_chunked_response_rechunked_for_an_http11_client(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    backend.reply(b"6\r\n world\r\n0\r\n\r\n")
    data = client.take()
    assert data.startswith(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert data.endswith(b"0\r\n\r\n")
    (response,) = parse_responses(data)
    assert response.complete and response.body == b"hello world"
    assert response.header_names().count(b"transfer-encoding") == 1
    assert response.header(b"content-length") is None
    assert not client.closed


def test_chunked_response_close_delimited_for_an_http10_client(gw):
    client = gw.client()
    backend, request = forwarded_request(gw, client, get(version=b"1.0"))
    assert request.startswith(b"GET /api/users HTTP/1.1\r\n")  # always HTTP/1.1 towards the backend
    backend.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert client.take() == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world"
    assert client.closed


def test_http10_keep_alive_client_with_a_content_length_response(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get(version=b"1.0", extra=b"Connection: keep-alive\r\n"))
    backend.reply(OK_5)
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
    assert not client.closed
    client.send(get(version=b"1.0"))  # this one without keep-alive
    backend.request()
    backend.reply(OK_5)
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    assert client.closed


def test_client_connection_close_is_honoured(gw):
    client = gw.client()
    backend, request = forwarded_request(gw, client, get(extra=b"Connection: close\r\n"))
    assert b"connection" not in request.lower()
    backend.reply(OK_5)
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    assert client.closed
    # the backend connection itself is still good and goes back to the pool
    assert gw.upstreams["api"].connections.idle_count("127.0.0.1:9001") == 1


def test_close_delimited_upstream_response(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ")
    backend.reply(b"second")
    assert not client.closed
    backend.close()
    (response,) = parse_responses(client.take())
    assert response.complete and response.body == b"first second"
    assert response.header(b"transfer-encoding") == b"chunked"
    assert not client.closed
    assert gw.upstreams["api"].connections.idle_count("127.0.0.1:9001") == 0


def test_head_response_with_content_length_does_not_hang(gw):
    client = gw.client()
    backend, request = forwarded_request(gw, client, b"HEAD /api/file HTTP/1.1\r\nHost: h\r\n\r\n")
    assert request.startswith(b"HEAD /api/file HTTP/1.1\r\n")
    backend.reply(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n")
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n"
    assert [record.status for record, _ in gw.access_log] == [200]
    # the next request on the same client connection works, on the same backend connection
    client.send(get("/api/next", host=b"h"))
    assert backend.request().startswith(b"GET /api/next HTTP/1.1\r\n")
    backend.reply(OK_5)
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert gw.connect_attempts == [API]


def test_head_response_with_chunked_framing_has_no_body(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, b"HEAD /api/file HTTP/1.1\r\nHost: h\r\n\r\n")
    backend.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    data = client.take()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\n")
    assert b"0\r\n\r\n" not in data
    client.send(get(host=b"h"))
    backend.request()
    backend.reply(OK_5)
    assert client.take().endswith(b"\r\n\r\nhello")


@pytest.mark.parametrize("status_line, extra", [
    (b"HTTP/1.1 204 No Content", b""),
    (b"HTTP/1.1 204 No Content", b"Content-Length: 0\r\n"),
    (b"HTTP/1.1 304 Not Modified", b"ETag: \"x\"\r\n"),
    (b"HTTP/1.1 304 Not Modified", b"ETag: \"x\"\r\nContent-Length: 99\r\n"),
])
def test_bodiless_statuses(gw, status_line, extra):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(status_line + b"\r\n" + extra + b"\r\n")
    data = client.take()
    assert data.startswith(status_line + b"\r\n")
    assert data.endswith(b"\r\n\r\n")
    head = data.lower()
    assert b"transfer-encoding" not in head
    if status_line.startswith(b"HTTP/1.1 204"):
        assert b"content-length" not in head  # RFC 9110 8.6: never in a 204
    # the connection goes on
    client.send(get())
    backend.request()
    backend.reply(OK_5)
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert gw.connect_attempts == [API]


def test_interim_100_from_the_backend_is_not_relayed(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert client.received() == b""
    backend.reply(OK_5)
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


# -- request bodies -----------------------------------------------------------------------


def test_content_length_request_body_forwarded(gw):
    client = gw.client()
    client.send(b"POST /api/items HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello")
    backend = gw.accept_backend()
    line, headers, rest = parse_request_head(backend.request())
    assert line == b"POST /api/items HTTP/1.1"
    assert (b"Content-Length", b"11") in headers
    assert rest == b"hello"
    client.send(b" world")
    assert backend.request() == b" world"
    backend.reply(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert client.take() == b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"


def test_chunked_request_body_rechunked(gw):
    client = gw.client()
    client.send(b"POST /api/items HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    backend = gw.accept_backend()
    line, headers, rest = parse_request_head(backend.request())
    assert (b"Transfer-Encoding", b"chunked") in headers
    assert not any(name.lower() == b"content-length" for name, _ in headers)
    client.send(b"5\r\nhello\r\n")
    client.send(b"6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    body = rest + backend.request()
    assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    backend.reply(OK_5)
    assert client.take().endswith(b"hello")


def test_body_received_before_the_connection_is_buffered_then_sent(gw):
    client = gw.client()
    client.send(b"PUT /api/items/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabcdef")
    backend = gw.accept_backend()
    assert backend.request().endswith(b"\r\n\r\nabcdef")


def test_large_early_body_pauses_the_client_until_connected(gw):
    client = gw.client()
    size = CONNECT_BUFFER_LIMIT + 10_000
    client.send(b"POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (size + 1))
    client.send(b"x" * size)
    assert client.transport.producerState == "paused"
    backend = gw.accept_backend()
    assert client.transport.producerState == "producing"
    assert backend.request().endswith(b"x" * size)
    client.send(b"!")
    assert backend.request() == b"!"


def test_expect_100_continue(gw):
    client = gw.client()
    client.send(b"POST /api/items HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert client.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    backend = gw.accept_backend()
    line, headers, rest = parse_request_head(backend.request())
    assert not any(name.lower() == b"expect" for name, _ in headers)
    assert rest == b""
    client.send(b"hello")
    assert backend.request() == b"hello"
    backend.reply(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert client.take() == b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"


def test_expect_100_continue_for_an_unrouted_request_refuses_without_reading(gw):
    client = gw.client()
    client.send(b"POST /nowhere HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    data = client.take()
    assert data.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"100 Continue" not in data
    assert client.closed


def test_upload_backpressure_pauses_the_client(gw):
    client = gw.client()
    client.send(b"POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n")
    backend = gw.accept_backend()
    producer = backend.transport.producer
    assert producer is not None  # the client's reading feeds the backend's write buffer
    producer.pauseProducing()
    assert client.transport.producerState == "paused"
    producer.resumeProducing()
    assert client.transport.producerState == "producing"
    producer.pauseProducing()
    client.send(b"y" * 100)  # the last bytes: the upload is done, reading must not stay paused
    assert backend.transport.producer is None
    assert client.transport.producerState == "producing"


def test_early_response_during_a_throttled_upload_does_not_stall_the_client(gw):
    """The backend answers (413) before reading the whole body while its write buffer is full:
    the client connection must not stay paused for ever (read on, or close)."""
    client = gw.client()
    client.send(b"POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    backend = gw.accept_backend()
    backend.transport.producer.pauseProducing()  # the backend is not reading the upload
    assert client.transport.producerState == "paused"
    backend.reply(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
    gw.run()
    assert client.take() == b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"
    assert backend.closed  # out of step with the request: never reused
    assert client.closed or client.transport.producerState == "producing"


# -- backpressure and connection reuse ---------------------------------------------------------


def test_download_backpressure_pauses_the_backend(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100)
    producer = client.transport.producer
    assert producer is not None and client.transport.streaming
    producer.pauseProducing()
    assert backend.transport.producerState == "paused"
    producer.resumeProducing()
    assert backend.transport.producerState == "producing"
    producer.pauseProducing()
    backend.reply(b"a" * 900)  # already in flight when the pause came
    assert producer.source is None  # detached when the response is complete
    # pooled for the next request, and reading again (so that a close by the backend is seen)
    assert gw.upstreams["api"].connections.idle_count("127.0.0.1:9001") == 1
    assert backend.transport.producerState == "producing"


def test_a_backend_answering_while_the_clients_buffer_is_full_starts_paused(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(OK_5)
    client.take()
    client.transport.producer.pauseProducing()  # the client stopped reading
    client.send(get())
    assert backend.request().startswith(b"GET /api/users HTTP/1.1\r\n")  # the same pooled connection
    backend.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100)
    assert backend.transport.producerState == "paused"
    client.transport.producer.resumeProducing()
    assert backend.transport.producerState == "producing"


def test_the_client_connection_closes_with_its_producer_unregistered(gw):
    client = gw.client()
    assert client.transport.producer is not None  # registered once, when the connection opened
    client.transport.producer.pauseProducing()  # (a paused producer would keep it open)
    client.send(b"GET /api/users HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    backend = gw.accept_backend()
    backend.reply(OK_5)
    assert client.transport.disconnecting
    assert client.transport.producer is None


def test_upstream_connection_reused_for_the_next_request(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get("/api/one"))
    backend.reply(OK_5)
    client.take()
    other_client = gw.client(ip="10.0.0.99")
    other_client.send(get("/api/two"))
    assert backend.request().startswith(b"GET /api/two HTTP/1.1\r\n")
    backend.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
    assert other_client.take().endswith(b"\r\n\r\ntwo")
    assert gw.connect_attempts == [API]
    assert gw.pending_connects == 0


def test_backend_connection_close_is_not_reused(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert backend.closed
    assert not client.closed
    client.send(get())
    assert len(gw.connect_attempts) == 2


def test_idle_connection_closed_after_keepalive_timeout(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(OK_5)
    connections = gw.upstreams["api"].connections
    assert connections.idle_count("127.0.0.1:9001") == 1
    gw.reactor.advance(1.4)
    assert not backend.closed
    gw.reactor.advance(0.2)  # keepalive_timeout: 1.5 in CONFIG
    assert backend.closed
    assert connections.idle_count("127.0.0.1:9001") == 0
    client.send(get())
    assert len(gw.connect_attempts) == 2


def test_idle_timer_restarts_with_each_reuse(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(OK_5)
    gw.reactor.advance(1.0)
    client.send(get())
    backend.request()
    gw.reactor.advance(1.0)  # busy: no idle timeout while a request is in flight
    assert not backend.closed
    backend.reply(OK_5)
    gw.reactor.advance(1.0)
    assert not backend.closed
    gw.reactor.advance(0.6)
    assert backend.closed


def test_backend_closing_an_idle_connection_leaves_the_pool(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(OK_5)
    backend.close()
    assert gw.upstreams["api"].connections.idle_count("127.0.0.1:9001") == 0
    client.send(get())
    assert len(gw.connect_attempts) == 2
    fresh = gw.accept_backend()
    assert fresh.request().startswith(b"GET /api/users HTTP/1.1\r\n")


@pytest.mark.parametrize("method, body", [(b"GET", b""), (b"HEAD", b""), (b"PUT", b"payload"),
                                          (b"DELETE", b"")])
def test_stale_pooled_connection_retried_on_a_fresh_one(gw, method, body):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get("/api/warm-up"))
    backend.reply(OK_5)
    client.take()
    request = b"%s /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (method, len(body), body)
    if not body:
        request = b"%s /api/x HTTP/1.1\r\nHost: h\r\n\r\n" % method
    client.send(request)
    first_try = backend.request()
    assert first_try.startswith(method + b" /api/x HTTP/1.1\r\n")
    backend.close(error.ConnectionLost())  # the backend had given up on the idle connection
    assert client.received() == b""
    assert gw.connect_attempts == [API, API]
    fresh = gw.accept_backend()
    assert fresh.request() == first_try
    fresh.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert client.take().startswith(b"HTTP/1.1 200 OK\r\n")
    assert [record.status for record, _ in gw.access_log] == [200, 200]


def test_stale_pooled_connection_not_retried_for_post(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get("/api/warm-up"))
    backend.reply(OK_5)
    client.take()
    client.send(b"POST /api/order HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
    backend.request()
    backend.close(error.ConnectionLost())
    assert gw.connect_attempts == [API]
    assert client.take().startswith(b"HTTP/1.1 502 Bad Gateway\r\n")


def test_post_not_sent_into_a_pooled_connection_that_is_closing(gw):
    """The idle timer has just closed the pooled connection (connectionLost not yet delivered,
    as within one reactor iteration): a POST arriving now must go to a fresh connection,
    not into the closing one (where it would be lost, and answered 502 as it cannot be retried)."""
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get("/api/warm-up"))
    backend.reply(OK_5)
    client.take()
    backend.transport.loseConnection()  # what the idle timer's call does
    client.send(b"POST /api/order HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
    gw.run()
    assert backend.request() == b""
    assert gw.connect_attempts == [API, API]
    fresh = gw.accept_backend()
    assert fresh.request().endswith(b"\r\n\r\nhi")
    fresh.reply(OK_5)
    assert client.take().startswith(b"HTTP/1.1 200 OK\r\n")


def test_no_retry_once_the_response_has_begun(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get("/api/warm-up"))
    backend.reply(OK_5)
    client.take()
    client.send(get())
    backend.request()
    backend.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    backend.close(error.ConnectionLost())
    gw.run()
    assert gw.connect_attempts == [API]
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
    assert client.closed  # cut short: the client must see it


def test_backend_failing_on_a_fresh_connection_is_502(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.close(error.ConnectionLost())
    (response,) = parse_responses(client.take())
    assert response.status == 502
    assert response.header(b"content-type") == b"text/plain; charset=utf-8"
    assert gw.connect_attempts == [API]
    assert not client.closed


def test_invalid_response_from_the_backend_is_502(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(b"SPDY/3 nonsense\r\n\r\n")
    gw.run()
    (response,) = parse_responses(client.take())
    assert response.status == 502
    assert backend.closed


def test_chunked_response_cut_short_closes_the_client(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    backend.close(error.ConnectionLost())
    gw.run()
    data = client.take()
    assert not data.endswith(b"0\r\n\r\n")  # no terminating chunk: the client sees it was cut short
    assert client.closed


def test_client_going_away_drops_the_backend_connection(gw):
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
    client.transport.peer_closes(error.ConnectionLost())
    gw.run()
    assert backend.transport.aborted
    assert gw.upstreams["api"].connections.idle_count("127.0.0.1:9001") == 0
    assert gw.upstreams["api"].pool.servers[0].active == 0
    assert len(gw.access_log) == 1


def test_client_going_away_while_connecting(gw):
    client = gw.client()
    client.send(get())
    client.transport.peer_closes(error.ConnectionLost())
    assert gw.upstreams["api"].pool.servers[0].active == 0
    assert [record.status for record, _ in gw.access_log] == [499]
    backend = gw.accept_backend()  # the connection arrives late: closed, not leaked
    gw.run()
    assert backend.closed
    assert backend.transport.value() == b""


# -- pipelining ------------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(gw):
    client = gw.client()
    client.send(get("/api/1") + get("/api/2") + get("/api/3"))
    assert gw.connect_attempts == [API]
    assert client.transport.producerState == "paused"  # nothing more is read while requests queue
    backend = gw.accept_backend()
    assert backend.request().startswith(b"GET /api/1 HTTP/1.1\r\n")
    backend.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
    assert backend.request() == b""  # the second request waits for the first response to finish
    backend.reply(b"-done")
    assert backend.request().startswith(b"GET /api/2 HTTP/1.1\r\n")
    backend.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
    assert backend.request().startswith(b"GET /api/3 HTTP/1.1\r\n")
    backend.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nthird\r\n0\r\n\r\n")
    responses = parse_responses(client.take())
    assert [r.body for r in responses] == [b"first-done", b"second", b"third"]
    assert all(r.complete for r in responses)
    assert client.transport.producerState == "producing"
    assert gw.connect_attempts == [API]
    assert [record.request_line for record, _ in gw.access_log] == [
        "GET /api/1 HTTP/1.1", "GET /api/2 HTTP/1.1", "GET /api/3 HTTP/1.1"]


def test_pipelined_head_then_get(gw):
    client = gw.client()
    client.send(b"HEAD /api/a HTTP/1.1\r\nHost: h\r\n\r\n" + get("/api/b"))
    backend = gw.accept_backend()
    assert backend.request().startswith(b"HEAD /api/a ")
    backend.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n")
    assert backend.request().startswith(b"GET /api/b ")
    backend.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.take() == (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_pipelined_local_and_proxied_responses_keep_their_order(gw):
    client = gw.client()
    client.send(get("/api/1") + get("/nowhere") + get("/empty/x"))
    backend = gw.accept_backend()
    backend.request()
    assert client.received() == b""  # the 404 and 503 wait behind the proxied response
    backend.reply(OK_5)
    responses = parse_responses(client.take())
    assert [r.status for r in responses] == [200, 404, 503]


def test_pipelined_request_with_body(gw):
    client = gw.client()
    client.send(get("/api/1") + b"POST /api/2 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody")
    backend = gw.accept_backend()
    backend.request()
    backend.reply(OK_5)
    assert backend.request().endswith(b"\r\n\r\nbody")
    backend.reply(OK_5)
    assert [r.status for r in parse_responses(client.take())] == [200, 200]


def test_pipelined_requests_across_upstreams(gw):
    client = gw.client()
    client.send(get("/web/a") + get("/api/b"))
    assert gw.connect_attempts == [("127.0.0.1", 8001)]
    web = gw.accept_backend()
    web.request()
    web.reply(OK_5)
    assert gw.connect_attempts == [("127.0.0.1", 8001), API]
    api = gw.accept_backend()
    assert api.request().startswith(b"GET /api/b ")
    api.reply(OK_5)
    assert len(parse_responses(client.take())) == 2


def test_non_websocket_upgrade_request_proxied_as_plain_http(gw):
    client = gw.client()
    client.send(get("/api/ws", extra=b"Connection: Upgrade\r\nUpgrade: h2c\r\n") + get("/api/after"))
    backend = gw.accept_backend()
    request = backend.request()
    assert b"upgrade" not in request.lower()
    backend.reply(OK_5)
    assert backend.request().startswith(b"GET /api/after HTTP/1.1\r\n")
    backend.reply(OK_5)
    assert [r.status for r in parse_responses(client.take())] == [200, 200]


WS_REQUEST_EXTRA = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
SWITCHING = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


def test_websocket_upgrade_becomes_a_tunnel(gw):
    client = gw.client()
    client.send(get("/api/ws", extra=WS_REQUEST_EXTRA) + b"early-frame")
    backend = gw.accept_backend()
    request = backend.request()
    assert b"\r\nConnection: Upgrade\r\n" in request and b"\r\nUpgrade: websocket\r\n" in request
    assert b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" in request
    assert b"early-frame" not in request  # held back until the backend agreed to switch
    backend.reply(SWITCHING + b"server-hello")
    answer = client.take()
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in answer and answer.endswith(b"server-hello")
    assert backend.request() == b"early-frame"
    client.send(b"GET / HTTP/1.1\r\n\r\n")  # no longer HTTP: passed through as bytes
    assert backend.request() == b"GET / HTTP/1.1\r\n\r\n"
    backend.reply(b"\x81\x02hi")
    assert client.take() == b"\x81\x02hi"
    backend.close()
    gw.reactor.advance(0)
    assert client.closed
    assert [record.status for record, _ in gw.access_log] == [101]


def test_websocket_upgrade_refused_by_backend_is_relayed_then_closed(gw):
    client = gw.client()
    client.send(get("/api/ws", extra=WS_REQUEST_EXTRA))
    backend = gw.accept_backend()
    backend.request()
    backend.reply(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nno\n")
    responses = parse_responses(client.take())
    assert [r.status for r in responses] == [400]
    assert client.closed


def test_websocket_tunnel_closes_when_idle(gw):
    client = gw.client()
    client.send(get("/api/ws", extra=WS_REQUEST_EXTRA))
    backend = gw.accept_backend()
    backend.request()
    backend.reply(SWITCHING)
    client.take()
    gw.reactor.advance(gw.config.upstreams["api"].read_timeout + 1)
    assert client.closed and backend.closed


# -- the gateway's own answers --------------------------------------------------------------


def test_no_route_is_404_text_plain(gw):
    client = gw.client()
    client.send(get("/nowhere"))
    assert client.take() == (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Length: 23\r\n\r\nno route for this path\n")
    assert not client.closed
    assert gw.connect_attempts == []
    client.send(get())  # the connection is still usable
    assert gw.connect_attempts == [API]
    assert [record.status for record, _ in gw.access_log] == [404]


def test_every_request_received_is_counted_whatever_its_answer(gw):
    """``context.requests``: a worker's ``total_requests`` in ``GET /workers``."""
    client = gw.client()
    client.send(get("/nowhere") + get("/nowhere"))
    forwarded_request(gw, client, get())
    other = gw.client()
    other.send(b"GET /nowhere HTTP/1.1\r\n\r\n")  # no Host: 400
    assert other.take().startswith(b"HTTP/1.1 400 ")
    assert gw.context.requests == 4


def test_head_to_no_route_has_no_body(gw):
    client = gw.client()
    client.send(b"HEAD /nowhere HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.take() == (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Length: 23\r\n\r\n")


def test_unrouted_request_body_is_read_and_dropped(gw):
    client = gw.client()
    client.send(b"POST /nowhere HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01234")
    assert client.take().startswith(b"HTTP/1.1 404 Not Found\r\n")
    client.send(b"56789" + get())
    assert gw.connect_attempts == [API]
    assert not client.closed


def test_empty_pool_is_503(gw):
    client = gw.client()
    client.send(get("/empty/x"))
    (response,) = parse_responses(client.take())
    assert (response.status, response.reason) == (503, b"Service Unavailable")
    assert response.header(b"content-type") == b"text/plain; charset=utf-8"
    assert response.body.endswith(b"\n") and len(response.body) < 100
    assert gw.connect_attempts == []
    assert not client.closed


def test_refused_connection_goes_to_the_next_server(gw):
    client = gw.client()
    client.send(get("/web/page"))
    first = gw.refuse_backend()
    assert client.received() == b""
    assert len(gw.connect_attempts) == 2
    second_backend = gw.accept_backend()
    assert {first, (second_backend.host, second_backend.port)} == {("127.0.0.1", 8001), ("127.0.0.1", 8002)}
    assert second_backend.request().startswith(b"GET /web/page HTTP/1.1\r\n")
    second_backend.reply(OK_5)
    assert client.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    servers = {s.address: s for s in gw.upstreams["web"].pool.servers}
    assert servers[f"{first[0]}:{first[1]}"].failures == 1
    assert all(s.active == 0 for s in servers.values())


def test_all_servers_refusing_is_502(gw):
    client = gw.client()
    client.send(get("/web/page"))
    gw.refuse_backend()
    gw.refuse_backend()
    assert gw.pending_connects == 0
    (response,) = parse_responses(client.take())
    assert (response.status, response.reason) == (502, b"Bad Gateway")
    assert response.header(b"content-type") == b"text/plain; charset=utf-8"
    assert not client.closed
    assert [(record.status, record.upstream != "-") for record, _ in gw.access_log] == [(502, True)]
    assert all(s.active == 0 for s in gw.upstreams["web"].pool.servers)


def test_refused_with_a_request_body_in_flight_closes(gw):
    """A 502 sent before the request body was read cannot leave the connection reusable."""
    client = gw.client()
    client.send(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01234")
    gw.refuse_backend()
    (response,) = parse_responses(client.take())
    assert response.status == 502
    assert client.closed


@pytest.mark.parametrize("data", [
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", id="tls hello"),
    pytest.param(b"NOT HTTP AT ALL\r\n\r\n", id="garbage"),
    pytest.param(b"GET /api/x HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n", id="header without colon"),
    pytest.param(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n0\r\n\r\n", id="content-length and transfer-encoding"),
    pytest.param(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                 id="two content-lengths"),
    pytest.param(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", id="negative length"),
    pytest.param(b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", id="te not chunked"),
    pytest.param(b"GET /api/x HTTP/1.1\r\nHost : h\r\n\r\n", id="space before colon"),
])
def test_malformed_request_is_400_and_closed(gw, data):
    client = gw.client()
    client.send(data)
    gw.run()
    data_out = client.take()
    assert data_out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data_out
    assert b"Connection: close\r\n" in data_out
    assert client.closed
    # nothing half-open towards a backend either
    while gw.pending_connects:
        backend = gw.accept_backend()
        gw.run()
        assert backend.closed


def test_invalid_chunk_size_is_400_and_closed(gw):
    client = gw.client()
    client.send(b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.send(b"zz\r\nhello\r\n")
    gw.run()
    data = client.take()
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert client.closed
    assert all(s.active == 0 for s in gw.upstreams["api"].pool.servers)
    if gw.pending_connects:
        backend = gw.accept_backend()
        gw.run()
        assert backend.closed


def test_invalid_chunk_size_while_forwarding_aborts_the_backend(gw):
    client = gw.client()
    client.send(b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    backend = gw.accept_backend()
    client.send(b"5\r\nhello\r\n")
    client.send(b"xyz\r\n")
    gw.run()
    assert client.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert client.closed
    assert backend.closed
    assert gw.upstreams["api"].connections.idle_count("127.0.0.1:9001") == 0


def test_missing_host_on_http11_is_400(gw):
    client = gw.client()
    client.send(b"GET /api/x HTTP/1.1\r\nUser-Agent: t\r\n\r\n")
    data = client.take()
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert data.endswith(b"missing Host header\n")
    assert client.closed
    assert gw.connect_attempts == []


def test_two_host_headers_is_400(gw):
    client = gw.client()
    client.send(b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert client.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert client.closed


def test_http10_without_host_is_routed(gw):
    client = gw.client()
    client.send(b"GET /api/x HTTP/1.0\r\n\r\n")
    backend = gw.accept_backend()
    line, headers, _ = parse_request_head(backend.request())
    assert line == b"GET /api/x HTTP/1.1"
    assert not any(name.lower() in (b"host", b"x-forwarded-host") for name, _ in headers)


@pytest.mark.parametrize("data", [
    pytest.param(b"GET /api/x\r\n\r\n", id="http/0.9"),
    pytest.param(b"GET /api/x HTTP/0.9\r\nHost: h\r\n\r\n", id="0.9 with version"),
    pytest.param(b"GET /api/x HTTP/2.0\r\nHost: h\r\n\r\n", id="2.0"),
    pytest.param(b"GET /api/x HTTP/1.2\r\nHost: h\r\n\r\n", id="1.2"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="h2 preface"),
])
def test_unsupported_versions_refused(gw, data):
    client = gw.client()
    client.send(data)
    gw.run()
    (response,) = parse_responses(client.take())
    assert response.status in (400, 505)
    assert client.closed
    assert gw.connect_attempts == []


def test_absolute_form_target_refused_without_proxying(gw):
    client = gw.client()
    client.send(b"GET http://example.com/api/x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    (response,) = parse_responses(client.take())
    assert response.status == 400
    assert gw.connect_attempts == []


@pytest.mark.parametrize("refused", [
    pytest.param(b"GET /api/x HTTP/1.1\r\n\r\n", id="missing host"),
    pytest.param(b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two hosts"),
    pytest.param(b"GET http://h/api/x HTTP/1.1\r\nHost: h\r\n\r\n", id="absolute form"),
    pytest.param(b"GET /api/x HTTP/2.0\r\nHost: h\r\n\r\n", id="http/2.0"),
])
def test_request_after_a_refused_one_is_not_forwarded(gw, refused):
    """A request refused with "Connection: close" ends the connection (RFC 9112 9.6): bytes
    behind it in the same read must not be acted on, let alone sent to a backend."""
    client = gw.client()
    client.send(refused + b"DELETE /api/everything HTTP/1.1\r\nHost: h\r\n\r\n")
    assert gw.connect_attempts == []
    if gw.pending_connects:
        # In a real reactor the backend connection may well complete before the client
        # connection's close is delivered: then the request goes out.
        backend = gw.accept_backend()
        assert backend.request() == b""
    gw.run()
    assert len(parse_responses(client.take())) == 1
    assert client.closed
    assert len(gw.access_log) == 1


# -- listener options: TLS scheme, HSTS, redirect to HTTPS -------------------------------------

LISTENERS = CONFIG.replace(
    "listeners: [{port: 0}]",
    "listeners:\n"
    "  - {name: plain, port: 0, redirect_https: 8443, redirect_exempt: [/api/]}\n"
    "  - {name: secure, port: 1, tls: {certificates: [{cert: a.pem, key: a.key}], hsts: 3600}}")


def test_tls_listener_sets_the_forwarded_proto_and_hsts():
    gw = Gateway(LISTENERS, listener=1)
    client = gw.client()
    backend, request = forwarded_request(gw, client, get(host=b"e.com"))
    assert b"\r\nX-Forwarded-Proto: https\r\n" in request
    backend.reply(OK_5)
    assert client.take() == (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                             b"Strict-Transport-Security: max-age=3600\r\n\r\nhello")
    client.send(get("/nowhere", host=b"e.com"))
    assert b"Strict-Transport-Security: max-age=3600\r\n" in client.take()


@pytest.mark.parametrize("request_bytes, status, location", [
    (b"GET /web/x?y=1 HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n", 301, b"https://example.com:8443/web/x?y=1"),
    (b"HEAD /web/x HTTP/1.1\r\nHost: e.com\r\n\r\n", 301, b"https://e.com:8443/web/x"),
    (b"POST /web/x HTTP/1.1\r\nHost: e.com\r\nContent-Length: 2\r\n\r\nhi", 308, b"https://e.com:8443/web/x"),
    (b"GET /nowhere HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", 301, b"https://[::1]:8443/nowhere"),
])
def test_redirect_listener(request_bytes, status, location):
    gw = Gateway(LISTENERS, listener=0)
    client = gw.client()
    client.send(request_bytes)
    (response,) = parse_responses(client.take(), head_requests=(0,) if request_bytes.startswith(b"HEAD") else ())
    assert response.status == status
    assert response.header(b"location") == location
    assert not client.closed
    assert gw.connect_attempts == []


@pytest.mark.parametrize("host", [b"e.com/evil", b"e.com\\@evil", b"-bad-"])
def test_redirect_listener_refuses_an_unsafe_host(host):
    gw = Gateway(LISTENERS, listener=0)
    client = gw.client()
    client.send(get("/web/x", host=host))
    (response,) = parse_responses(client.take())
    assert response.status == 400
    assert response.header(b"location") is None
    assert client.closed


def test_redirect_exempt_prefix_is_proxied():
    gw = Gateway(LISTENERS, listener=0)
    client = gw.client()
    backend, request = forwarded_request(gw, client, get("/api/acme", host=b"e.com"))
    assert request.startswith(b"GET /api/acme HTTP/1.1\r\n")
    assert b"\r\nX-Forwarded-Proto: http\r\n" in request


@pytest.mark.parametrize("max_fails", [1, 3])
def test_a_response_from_a_server_that_failed_clears_its_failures(max_fails):
    gw = Gateway(CONFIG.replace('keepalive_timeout: 1.5', f'keepalive_timeout: 1.5\n    max_fails: {max_fails}'))
    (server,) = gw.upstreams["api"].pool.servers
    client = gw.client()
    client.send(get())
    gw.refuse_backend()
    (response,) = parse_responses(client.take())
    assert response.status == 502
    assert server.recent_failures == 1
    assert bool(server.down_until) == (max_fails == 1)  # taken out when max_fails is reached
    backend, _ = forwarded_request(gw, client, get())  # (the only server: tried even when out)
    backend.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert parse_responses(client.take())[0].status == 200
    assert (server.recent_failures, server.down_until) == (0, 0.0)


def test_without_an_access_log_every_kind_of_answer_still_works(gw):
    gw.context.access_log = None
    client = gw.client()
    backend, _ = forwarded_request(gw, client, get())
    backend.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    client.send(get("/nowhere"))
    client.send(get("/api/x", extra=b"Content-Length: 5\r\n") + b"hel")
    backend.reply(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert [response.status for response in parse_responses(client.take())] == [200, 404, 413]
    assert gw.access_log == []
