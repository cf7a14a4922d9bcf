"""Active health checks' rules: what a check sends, when it passes, and rise/fall.

The rise/fall rule is HAProxy's (``rise``/``fall``) and nginx plus's
(``passes``/``fails``): a healthy server is taken out after ``fall``
consecutive failed checks, an unhealthy one is brought back after ``rise``
consecutive passed checks; one result the other way resets the count.

Every server starts **healthy**, as in nginx plus and HAProxy after a
configuration load: a gateway that restarts (or reloads) keeps sending
traffic to its servers while their first checks run, instead of refusing
everything until ``rise`` checks have passed.  A server that is really dead
is taken out ``fall`` checks later (and passive health, when on, takes it
out at its first failed request).

Pure: no Twisted, no clock.  :mod:`gateway.health` runs the checks and
carries out the transitions returned here.
"""

from __future__ import annotations

DOWN = "down"
UP = "up"

USER_AGENT = b"gateway-health-check"


class HealthState:
    """One server's rise/fall bookkeeping: its verdict and the current run of results."""

    __slots__ = ("healthy", "passes", "failures")

    def __init__(self, healthy: bool = True) -> None:
        self.healthy = healthy
        self.passes = 0  # consecutive passed checks, counted while unhealthy
        self.failures = 0  # consecutive failed checks, counted while healthy

    def record(self, passed: bool, rise: int, fall: int) -> str | None:
        """Count one check's result; returns the transition it causes: None, ``"down"`` or ``"up"``.

        *rise* and *fall* are passed on each call so that a reloaded
        configuration applies to the runs already under way.
        """
        if passed:
            self.failures = 0
            if self.healthy:
                return None
            self.passes += 1
            if self.passes < rise:
                return None
            self.healthy, self.passes = True, 0
            return UP
        self.passes = 0
        if not self.healthy:
            return None
        self.failures += 1
        if self.failures < fall:
            return None
        self.healthy, self.failures = False, 0
        return DOWN

    def __repr__(self) -> str:
        return (f"<HealthState {'healthy' if self.healthy else 'unhealthy'} passes={self.passes} "
                f"failures={self.failures}>")


def check_request(path: str, host: str) -> bytes:
    """The request a check sends: ``GET path`` for *host* (``host:port``), on a connection of its own.

    Characters outside ASCII in *path* are sent UTF-8 percent-encoded.
    """
    target = "".join(char if ord(char) < 128 else "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
                     for char in path)
    return (b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nUser-Agent: %s\r\nAccept: */*\r\n\r\n"
            % (target.encode("ascii"), host.encode("ascii"), USER_AGENT))


def status_failure(status: int, expect: int) -> str | None:
    """Why a response with *status* fails the check, or None when it passes."""
    if status == expect:
        return None
    return f"status {status}, expected {expect}"
