"""``redirect_https``: a plain-HTTP listener that sends every request to HTTPS.

One gateway for the module, in front of a backend of its own that writes
Gunicorn's access log, so that a test can prove a redirected request never
reached it: each test puts a unique marker in its paths, then sends an
exempt request (``/.well-known/acme-challenge/...``, routed normally) as a
control, waits until the control shows in the backend's log, and only then
checks that the marker does not.

Listeners: ``http`` (redirect to the TLS port, default 308 for other
methods, ACME exemption), ``http301`` (``redirect_status_other: 301``),
``http443`` (``redirect_https: 443``: nothing listens there, only Location
is checked) and ``https`` (the TLS listener, to follow a redirect with a
verifying client).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    HOST,
    Backend,
    Gateway,
    KeepAliveClient,
    free_port,
    gateway_config,
    http_get,
    make_certificates,
    parse_responses,
    request_on,
    send_raw,
    start_backend,
    start_gateway,
    tls_client_context,
    tls_connect,
    tls_listener,
    wait_until,
)

ACME = "/.well-known/acme-challenge/"
TINY = 512  # a redirect's body is "tiny": well below this many bytes


@dataclass
class Site:
    gateway: Gateway
    backend: Backend
    ca: Path
    http: int
    http301: int
    http443: int
    https: int

    def location(self, host: str, target: str, tls_port: int | None = None) -> str:
        port = self.https if tls_port is None else tls_port
        return f"https://{host}{'' if port == 443 else f':{port}'}{target}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("redirect")
    backend = start_backend("web-logged", directory / "backend", extra_args=["--access-logfile", "-"])
    try:
        cert, key = make_certificates(directory / "certs")
        http, http301, http443, https = free_port(), free_port(), free_port(), free_port()
        config = gateway_config(http, web=[backend.address], listeners=[
            {"name": "http", "port": http, "interface": HOST, "redirect_https": https,
             "redirect_exempt": [ACME]},
            {"name": "http301", "port": http301, "interface": HOST, "redirect_https": https,
             "redirect_status_other": 301},
            {"name": "http443", "port": http443, "interface": HOST, "redirect_https": 443},
            tls_listener(https, [(cert, key)], hsts=300),
        ])
        instance = start_gateway(config, directory / "gateway")
        try:
            yield Site(instance, backend, directory / "certs" / "ca.crt", http, http301, http443, https)
        finally:
            instance.stop()
    finally:
        backend.stop()


@pytest.fixture
def marker() -> str:
    """A unique path segment for this test's requests."""
    return f"m-{uuid.uuid4().hex[:12]}"


def assert_backend_never_saw(site: Site, marker: str) -> None:
    """The marker is not in the backend's access log, checked once a later control request is."""
    control = f"control-{uuid.uuid4().hex[:12]}"
    status, headers, _ = http_get(site.http, f"{ACME}{control}", headers={"Host": "localhost"})
    assert headers.get("X-Served-By"), f"the control request was not proxied ({status})"
    wait_until(lambda: control in site.backend.log_text(), 10.0, message="the control request in the backend log")
    log = site.backend.log_text()
    assert marker not in log, [line for line in log.splitlines() if marker in line]


def assert_redirect(status: int, headers, body: bytes, expected_status: int, location: str,
                    method: str = "GET") -> None:
    assert status == expected_status, (status, headers.items(), body)
    assert headers.get_all("Location") == [location]
    assert headers.get("Content-Type", "").startswith("text/plain")
    assert headers.get("Strict-Transport-Security") is None  # never over plain HTTP (RFC 6797 7.2)
    assert headers.get("X-Served-By") is None
    assert int(headers["Content-Length"]) < TINY
    if method == "HEAD":
        assert body == b""
    else:
        assert len(body) == int(headers["Content-Length"]) and len(body) < TINY


# -- Location keeps the host (without its port), path and query exactly ---------------------------

TARGETS = [
    "/",
    "/plain/path",
    "/a%20b",
    "/a%2Fb/c%2f",
    "/caf%C3%A9/%E2%9C%93/%F0%9F%98%80",
    "/%25/%2525",
    "/p;jsessionid=ABC;x=1/q;y=2",
    "/search?q=a&b=c=d&&e=&=f",
    "//double//slashes///",
    "/trailing?",
    "/?",
    "/x?q=%20%2F%3F%23%26&y=caf%C3%A9",
    "/a/../b/./c",
    "/~user/file.tar.gz?v=1.2.3",
    "/a+b?c+d=e+f",
    "/sub-delims:@!$'()*,=/x",
    "/q?url=http://example.com/?a=1&b=2",
    "//evil.example/x",
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("target", TARGETS)
def test_get_and_head_get_301_with_exact_location(site: Site, marker: str, method: str, target: str) -> None:
    target = target.replace("/", f"/{marker}/", 1) if target.startswith("/") and not target.startswith("//") \
        else target
    status, headers, body = http_get(site.http, target, method=method, headers={"Host": f"localhost:{site.http}"})
    assert_redirect(status, headers, body, 301, site.location("localhost", target), method)


def test_redirected_paths_never_reach_backend(site: Site, marker: str) -> None:
    for target in TARGETS:
        for method in ("GET", "HEAD", "POST", "PUT", "DELETE"):
            path = f"/{marker}{target}"
            body = b"x" * 100 if method in ("POST", "PUT") else None
            status, _, _ = http_get(site.http, path, method=method, body=body, headers={"Host": "localhost"})
            assert status in (301, 308), (method, path, status)
    assert_backend_never_saw(site, marker)
    # Access-log lines are flushed twice a second: wait (bounded) for them.
    wait_until(lambda: any(marker in line and " 301 " in line for line in site.gateway.stdout_text().splitlines()),
               5.0, message="the redirects in the gateway's access log")


@pytest.mark.parametrize("host, expected", [
    ("localhost", "localhost"),
    ("localhost:8080", "localhost"),
    ("example.com", "example.com"),
    ("Example.COM:80", "example.com"),            # host names are case-insensitive
    ("www.sub.example.co.uk:1234", "www.sub.example.co.uk"),
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.1:8080", "127.0.0.1"),
    ("[::1]", "[::1]"),
    ("[::1]:8080", "[::1]"),
    ("[2001:db8::1]:80", "[2001:db8::1]"),
    ("xn--caf-dma.example", "xn--caf-dma.example"),
])
def test_location_host_is_request_host_without_port(site: Site, marker: str, host: str, expected: str) -> None:
    target = f"/{marker}?q=1"
    status, headers, body = http_get(site.http, target, headers={"Host": host})
    assert_redirect(status, headers, body, 301, site.location(expected, target))


@pytest.mark.parametrize("host", ["example.com.", "example.com.:8080"])
def test_fully_qualified_host_with_trailing_dot_is_redirected(site: Site, marker: str, host: str) -> None:
    """``example.com.`` is a legal Host (RFC 3986 reg-name; what a browser sends for that URL)."""
    target = f"/{marker}?q=1"
    status, headers, body = http_get(site.http, target, headers={"Host": host})
    assert_redirect(status, headers, body, 301, site.location("example.com.", target))


def test_port_443_is_omitted(site: Site, marker: str) -> None:
    for host in ("localhost:8080", "example.com"):
        target = f"/{marker}/a%20b?x=1&y=%2F"
        status, headers, body = http_get(site.http443, target, headers={"Host": host})
        assert_redirect(status, headers, body, 301, f"https://{host.split(':')[0]}{target}")


# -- other methods ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_308_by_default(site: Site, marker: str, method: str) -> None:
    target = f"/{marker}/form?next=/x"
    body = b'{"a": 1}' if method in ("POST", "PUT", "PATCH") else None
    status, headers, data = http_get(site.http, target, method=method, body=body, headers={"Host": "localhost"})
    assert_redirect(status, headers, data, 308, site.location("localhost", target))


@pytest.mark.parametrize("method, expected", [("POST", 301), ("PUT", 301), ("GET", 301), ("HEAD", 301)])
def test_redirect_status_other_301(site: Site, marker: str, method: str, expected: int) -> None:
    target = f"/{marker}/form?a=1"
    body = b"a=1&b=2" if method in ("POST", "PUT") else None
    status, headers, data = http_get(site.http301, target, method=method, body=body, headers={"Host": "localhost"})
    assert_redirect(status, headers, data, expected, site.location("localhost", target), method)


def test_expect_continue_post_is_redirected_without_100(site: Site, marker: str) -> None:
    request = (f"POST /{marker}/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n"
               "Expect: 100-continue\r\n\r\n").encode()
    responses = parse_responses(send_raw(site.http, request, timeout=3.0))
    assert [response.status for response in responses] == [308], responses
    assert responses[0].header("Location") == site.location("localhost", f"/{marker}/upload")


# -- requests that get 400 -------------------------------------------------------------------------

@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET /x?y=1 HTTP/1.0\r\nUser-Agent: old\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    b"GET http://evil.example/ HTTP/1.1\r\nHost: localhost\r\n\r\n",   # absolute-form: no open redirect
], ids=["1.0-no-host", "1.0-no-host-query", "1.1-no-host", "empty-host", "two-hosts", "absolute-form"])
def test_missing_or_bad_host_gets_400(site: Site, request_bytes: bytes) -> None:
    responses = parse_responses(send_raw(site.http, request_bytes, timeout=3.0))
    assert [response.status for response in responses] == [400], responses
    assert responses[0].header("Location") is None
    assert (responses[0].header("Content-Type") or "").startswith("text/plain")


@pytest.mark.parametrize("host", [
    "evil.example/path",
    "evil.example?x=1",
    "user@evil.example",
    "evil.example\\x",
    "<script>",
    "exa mple.com",
    "evil.example#frag",
    "ev%69l.example",
    "[::1",
    "[::1]junk",           # junk after the IPv6 literal
    "localhost:abc",       # a port is digits only (RFC 9110 4.2.1 / RFC 3986 3.2.3)
    "localhost:80:90",
    "-leading.example",
], ids=lambda host: repr(host))
def test_host_with_illegal_characters_gets_400(site: Site, marker: str, host: str) -> None:
    request = f"GET /{marker} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    responses = parse_responses(send_raw(site.http, request, timeout=3.0))
    assert [response.status for response in responses] == [400], \
        [(response.status, response.header("Location")) for response in responses]
    assert responses[0].header("Location") is None
    assert (responses[0].header("Content-Type") or "").startswith("text/plain")
    assert len(responses[0].body) < TINY


# -- exemptions --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [f"{ACME}token-{{marker}}", f"{ACME}token-{{marker}}?x=1",
                                  f"{ACME.rstrip('/')}?{{marker}}"])
def test_acme_challenge_is_exempt_and_proxied(site: Site, marker: str, path: str) -> None:
    path = path.format(marker=marker)
    status, headers, _ = http_get(site.http, path, headers={"Host": "localhost"})
    assert headers.get("Location") is None
    assert headers.get("X-Served-By"), f"not proxied: {status} {headers.items()}"
    assert status == 404  # the example backend has no such file: its own 404, not the gateway's
    wait_until(lambda: marker in site.backend.log_text(), 10.0, message="the exempt request in the backend log")


@pytest.mark.parametrize("path", ["/.well-known/acme-challengeX/{marker}", "/.well-known/other/{marker}",
                                  "/{marker}/.well-known/acme-challenge/x", "/.WELL-KNOWN/acme-challenge/{marker}"])
def test_only_the_exempt_prefix_is_exempt(site: Site, marker: str, path: str) -> None:
    path = path.format(marker=marker)
    status, headers, body = http_get(site.http, path, headers={"Host": "localhost"})
    assert_redirect(status, headers, body, 301, site.location("localhost", path))


def test_exemption_is_per_listener(site: Site, marker: str) -> None:
    path = f"{ACME}token-{marker}"
    status, headers, body = http_get(site.http301, path, headers={"Host": "localhost"})
    assert_redirect(status, headers, body, 301, site.location("localhost", path))


# -- keep-alive and pipelining ------------------------------------------------------------------------

def test_keep_alive_two_gets_both_redirected(site: Site, marker: str) -> None:
    with KeepAliveClient(site.http) as client:
        for target in (f"/{marker}/one?a=1", f"/{marker}/two%20x"):
            status, headers, body = client.get(target, headers={"Host": "localhost"})
            assert_redirect(status, headers, body, 301, site.location("localhost", target))
        # A POST with a body in between: the body is read and dropped, the connection stays usable.
        status, headers, body = client.request("POST", f"/{marker}/post", headers={"Host": "localhost"},
                                               body=b"p" * 5000)
        assert_redirect(status, headers, body, 308, site.location("localhost", f"/{marker}/post"))
        status, headers, body = client.get(f"/{marker}/three", headers={"Host": "localhost"})
        assert_redirect(status, headers, body, 301, site.location("localhost", f"/{marker}/three"))
        assert client.connections_opened == 1
    assert_backend_never_saw(site, marker)


def test_pipelined_requests_redirected_in_order(site: Site, marker: str) -> None:
    targets = [f"/{marker}/{index}?i={index}" for index in range(3)]
    data = b"".join(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode() for target in targets)
    data += f"HEAD /{marker}/last HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    responses = parse_responses(send_raw(site.http, data, timeout=3.0), head_requests=frozenset({3}))
    assert [response.status for response in responses] == [301] * 4
    assert [response.header("Location") for response in responses] == \
        [site.location("localhost", target) for target in [*targets, f"/{marker}/last"]]


# -- following the redirect -----------------------------------------------------------------------------

def test_following_the_redirect_reaches_backend_over_verified_https(site: Site) -> None:
    status, headers, _ = http_get(site.http, "/echo?from=http", headers={"Host": f"localhost:{site.http}"})
    assert status == 301
    location = headers["Location"]
    assert location == f"https://localhost:{site.https}/echo?from=http"
    with tls_connect(site.https, tls_client_context(site.ca), "localhost") as sock:
        status, headers, body = request_on(sock, "GET", location.split(str(site.https), 1)[1],
                                           headers={"Host": f"localhost:{site.https}"})
    assert status == 200, body
    echo = json.loads(body)
    assert echo["headers"]["x-forwarded-proto"] == "https"
    assert echo["url"] == f"https://localhost:{site.https}/echo"
    assert echo["query_string"] == "from=http"
    assert headers.get("Strict-Transport-Security") == "max-age=300"

