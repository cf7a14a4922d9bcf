"""When a failed request may go to another server (nginx's proxy_next_upstream, Envoy's retry policy).

A request whose connection could not be opened was never seen by any backend
and may always be tried elsewhere.  One that was sent but got no response
byte may have been acted upon: it is tried again only when its method is
idempotent and its body can be sent again.  Either way the tries are bounded
by ``retries`` (default: every other server once) and by ``retry_timeout``.
"""

from __future__ import annotations

from typing import Final

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


def may_try_again(tries: int, retries: int | None, pool_size: int, first_try_at: float, retry_timeout: float,
                  now: float) -> bool:
    """Whether one more try is allowed after *tries* tries (the first one included)."""
    allowed = retries if retries is not None else pool_size - 1
    return tries <= allowed and now - first_try_at < retry_timeout


def may_resend(method: bytes, request_sent: bool, body_replayable: bool) -> bool:
    """Whether a request may be sent again after its attempt failed before any response byte."""
    if not request_sent:
        return True
    return method in IDEMPOTENT and body_replayable
