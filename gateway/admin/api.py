"""The admin API: list upstreams, add, change, drain and remove servers while traffic flows.

    GET    /upstreams                              every upstream and its servers
    GET    /upstreams/{name}                       one upstream
    GET    /workers                                the processes serving traffic
    POST   /upstreams/{name}/servers               {"address": "127.0.0.1:8003", "weight": 2} -> 201
    PATCH  /upstreams/{name}/servers/{address}     {"weight": 5} and/or {"state": "drain" | "up"} -> 200
    DELETE /upstreams/{name}/servers/{address}     202 while draining, 204 when gone; ?wait=1 waits

Every answer is JSON; errors are ``{"error": "..."}`` with 400, 401, 404,
405 or 409.  With a token configured, every call needs
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import unquote

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gateway.live import LiveUpstreams, OperatorError

log = Logger(namespace="gateway.admin")

MAX_BODY = 64 * 1024


class AdminResource(Resource):
    isLeaf = True

    def __init__(self, live: LiveUpstreams, token: str | None) -> None:
        super().__init__()
        self._live = live
        self._token = token.encode() if token else None

    def render(self, request: Request) -> Any:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        try:
            self._authorize(request)
            result = self._dispatch(request)
        except OperatorError as error:
            return self._error(request, error.status, str(error))
        if isinstance(result, Deferred):
            result.addCallbacks(lambda answer: self._finish(request, *answer),
                                lambda failure: self._failed(request, failure))
            return NOT_DONE_YET
        status, body = result
        request.setResponseCode(status)
        return b"" if body is None else json.dumps(body).encode() + b"\n"

    # -- routing ----------------------------------------------------------------------

    def _dispatch(self, request: Request) -> tuple[int, Any] | Deferred:
        parts = [unquote(part) for part in request.path.decode("latin-1").strip("/").split("/")]
        method = request.method
        if parts == ["upstreams"] and method == b"GET":
            return maybeDeferred(self._live.describe).addCallback(lambda body: (200, body))
        if len(parts) == 2 and parts[0] == "upstreams" and method == b"GET":
            return maybeDeferred(self._live.describe, parts[1]).addCallback(lambda body: (200, body))
        if parts == ["workers"] and method == b"GET":
            return maybeDeferred(self._live.describe_workers).addCallback(lambda body: (200, body))
        if len(parts) == 3 and parts[0] == "upstreams" and parts[2] == "servers" and method == b"POST":
            body = self._json_body(request)
            address = body.get("address")
            if not isinstance(address, str):
                raise OperatorError(400, 'expected {"address": "host:port", "weight": N}')
            weight = self._weight(body.get("weight", 1))
            self._only(body, {"address", "weight"})
            return self._live.add_server(parts[1], address, weight).addCallback(lambda server: (201, server))
        if len(parts) == 4 and parts[0] == "upstreams" and parts[2] == "servers":
            name, address = parts[1], parts[3]
            if method == b"PATCH":
                body = self._json_body(request)
                self._only(body, {"weight", "state"})
                weight = self._weight(body["weight"]) if "weight" in body else None
                state = body.get("state")
                if state not in (None, "drain", "up"):
                    raise OperatorError(400, 'expected "state": "drain" or "up"')
                if weight is None and state is None:
                    raise OperatorError(400, 'expected {"weight": N} and/or {"state": "drain" | "up"}')
                return self._live.update_server(name, address, weight, state).addCallback(lambda server: (200, server))
            if method == b"DELETE":
                return self._remove(request, name, address)
        if (parts and parts[0] == "upstreams" and len(parts) <= 4) or parts == ["workers"]:
            raise OperatorError(405, f"{method.decode('latin-1')} is not supported on {request.path.decode('latin-1')}")
        raise OperatorError(404, f"no such resource: {request.path.decode('latin-1')}")

    def _remove(self, request: Request, name: str, address: str) -> Deferred:
        wait = request.args.get(b"wait", [b"0"])[0] not in (b"0", b"", b"false")

        def answer(result: tuple[bool, Deferred]) -> tuple[int, Any] | Deferred:
            gone_now, gone = result
            if gone_now or wait:
                return gone.addCallback(lambda _: (204, None))
            return 202, {"address": address, "state": "draining"}

        return self._live.remove_server(name, address).addCallback(answer)

    # -- helpers ----------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self._token):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="gateway"')
            raise OperatorError(401, "missing or wrong bearer token")

    def _json_body(self, request: Request) -> dict[str, Any]:
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise OperatorError(400, "request body too large")
        try:
            body = json.loads(raw or b"{}")
        except ValueError as error:
            raise OperatorError(400, f"the body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise OperatorError(400, "expected a JSON object")
        return body

    @staticmethod
    def _weight(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OperatorError(400, f"weight must be an integer >= 1, got {value!r}")
        return value

    @staticmethod
    def _only(body: dict[str, Any], allowed: set[str]) -> None:
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise OperatorError(400, f"unknown field(s): {', '.join(unknown)}; expected: {', '.join(sorted(allowed))}")

    def _error(self, request: Request, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        return json.dumps({"error": message}).encode() + b"\n"

    def _finish(self, request: Request, status: int, body: Any) -> None:
        if request.finished or request._disconnected:
            return
        request.setResponseCode(status)
        if body is not None:
            request.write(json.dumps(body).encode() + b"\n")
        request.finish()

    def _failed(self, request: Request, failure: Failure) -> None:
        if failure.check(OperatorError):
            status, message = failure.value.status, str(failure.value)
        else:
            log.failure("admin request failed", failure)
            status, message = 500, f"internal error: {failure.getErrorMessage()}"
        if not request.finished and not request._disconnected:
            request.write(self._error(request, status, message))
            request.finish()


def build_admin_site(live: LiveUpstreams, token: str | None) -> Site:
    site = Site(AdminResource(live, token))
    site.displayTracebacks = False
    site.noisy = False
    return site
