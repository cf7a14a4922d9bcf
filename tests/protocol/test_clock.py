"""gateway.http.clock: the request path's time source."""

from __future__ import annotations

from twisted.internet.task import Clock

from gateway.http.clock import LiveTime, cached_time
from gateway.reactor import GatewayReactor


def test_the_gateway_reactor_keeps_the_time_of_its_iteration():
    reactor = GatewayReactor()
    time = cached_time(reactor)
    assert time is reactor.time
    assert abs(time.now - reactor.seconds()) < 5.0  # set when made, before any poll (then: test_event_dispatch)


def test_any_other_clock_is_read_live():
    clock = Clock()
    clock.advance(10)
    time = cached_time(clock)
    assert isinstance(time, LiveTime)
    assert time.now == 10
    clock.advance(2.5)
    assert time.now == 12.5
