"""The time as the request path reads it: once per reactor iteration, as nginx does.

nginx reads the clock once per event-loop iteration (``ngx_time_update``
after ``epoll_wait``) and every timeout and log time in that iteration uses
that value.  The gateway does the same: per proxied request it needed the
time seven times (deadlines, the read timeout, the idle pool, balancing,
the access log), each a ``time.time()`` call: 3.7% of its instructions per
keep-alive request (``bench/instructions.py``: 152,570 -> 146,950).

:class:`~gateway.reactor.GatewayReactor` keeps an :class:`IterationTime`:
the time at which its last poll returned (or its timed calls began to run),
so at most one iteration's work behind the clock.  Every other clock (the
test clocks, another reactor chosen with ``twistd --reactor``) is read live
through :class:`LiveTime`.  Timers themselves (``callLater``) still use
``seconds()``; only the values compared against them are cached, and a
timer that finds its deadline not yet reached re-arms itself.

The two are compiled classes behind one base, rather than the reactor's own
attribute: reading the reactor's attribute is a dictionary lookup, reading
``now`` here a compiled call.
"""

from __future__ import annotations

from typing import Any


class Time:
    """``now``: seconds since the epoch, as ``time.time()``."""

    @property
    def now(self) -> float:
        raise NotImplementedError


class IterationTime(Time):
    """The time set by the reactor once per iteration (``value``)."""

    def __init__(self, value: float) -> None:
        self.value = value

    @property
    def now(self) -> float:
        return self.value


class LiveTime(Time):
    """``now`` read from *clock*'s ``seconds()`` at every access."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock

    @property
    def now(self) -> float:
        return self._clock.seconds()


def cached_time(clock: Any) -> Time:
    """*clock*'s :class:`IterationTime` when it keeps one (GatewayReactor), else a :class:`LiveTime` over it."""
    time = getattr(clock, "time", None)
    return time if isinstance(time, IterationTime) else LiveTime(clock)
