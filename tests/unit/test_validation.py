"""gateway.core.validation: the request rules beyond llhttp's, and the cache of valid Host values."""

from __future__ import annotations

import pytest

from gateway.core import validation
from gateway.core.validation import request_problem


def problem(version=b"1.1", hosts=(b"example.com",), content_lengths=(), transfer_encodings=(), target=b"/"):
    found = request_problem(version, list(hosts), list(content_lengths), list(transfer_encodings), target)
    return None if found is None else found[2]


@pytest.mark.parametrize("host", [b"example.com", b"Example.COM:8080", b"127.0.0.1:33833", b"[::1]:80", b"[::1]",
                                  b"xn--bcher-kva.example", b""])
def test_valid_hosts_pass_every_time(host):
    assert problem(hosts=[host]) is None
    assert problem(hosts=[host]) is None  # (the second time from the cache)


@pytest.mark.parametrize("host", [b"exa mple.com", b"a/b", b"host\x00", b"[::1", b"example.com:80:80", b"a@b",
                                  b"example.com:123456"])
def test_invalid_hosts_are_refused_every_time(host):
    assert problem(hosts=[host]) == "invalid Host header"
    assert problem(hosts=[host]) == "invalid Host header"  # never cached
    assert host not in validation._VALID_HOSTS


def test_the_cache_of_valid_hosts_is_bounded(monkeypatch):
    monkeypatch.setattr(validation, "_VALID_HOSTS", set())
    monkeypatch.setattr(validation, "_VALID_HOSTS_KEPT", 3)
    for index in range(10):
        assert problem(hosts=[b"host%d.example" % index]) is None
    assert len(validation._VALID_HOSTS) == 3
    assert problem(hosts=[b"bad host"]) == "invalid Host header"


@pytest.mark.parametrize("fields, expected", [
    ({"version": b"2.0"}, "HTTP/1.0 and HTTP/1.1 only"),
    ({"hosts": [b"a", b"b"]}, "more than one Host header"),
    ({"hosts": []}, "missing Host header"),
    ({"version": b"1.0", "hosts": []}, None),
    ({"content_lengths": [b"1", b"1"]}, "more than one Content-Length header"),
    ({"transfer_encodings": [b"gzip"]}, 'Transfer-Encoding must be exactly "chunked"'),
    ({"transfer_encodings": [b"chunked"], "content_lengths": [b"3"]}, "both Content-Length and Transfer-Encoding"),
    ({"target": b"http://example.com/"}, "the request-target must be a path starting with /"),
    ({"target": b"/a#b"}, "the request-target must be a path starting with /"),
    ({"target": b"/caf\xc3\xa9"}, "the request-target must be a path starting with /"),
    ({"target": b"/api/users?page=2"}, None),
])
def test_request_rules(fields, expected):
    assert problem(**fields) == expected
