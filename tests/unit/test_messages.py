"""gateway.core.messages: the protocol-neutral request head."""

from __future__ import annotations

import pytest

from gateway.core.messages import NO_BODY, RequestHead, host_without_port


@pytest.mark.parametrize("host, name", [
    ("example.com", "example.com"),
    ("Example.COM:8080", "example.com"),
    ("127.0.0.1:80", "127.0.0.1"),
    ("[::1]:8080", "[::1]"),
    ("[::1]", "[::1]"),
    (" spaced.example ", "spaced.example"),
    ("", ""),
])
def test_host_without_port(host, name):
    assert host_without_port(host) == name


def head(**fields) -> RequestHead:
    values = dict(method=b"GET", target=b"/a?b=1", path="/a", query=b"?b=1", version=b"1.1",
                  headers=[(b"Host", b"Example.com:8080"), (b"X-Twice", b"1"), (b"x-twice", b"2")],
                  host=b"Example.com:8080", client_ip="10.0.0.1", scheme="http", keep_alive=True, body=NO_BODY)
    values.update(fields)
    return RequestHead(**values)


def test_request_head_helpers():
    request = head()
    assert request.host_name == "example.com"
    assert request.request_line == "GET /a?b=1 HTTP/1.1"
    assert request.header(b"x-twice") == b"1"
    assert request.header(b"absent") is None
    assert head(host=None).host_name is None
    assert head(version=b"1.0", method=b"POST").request_line == "POST /a?b=1 HTTP/1.0"
