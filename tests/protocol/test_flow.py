"""gateway.http.flow: ReadGate pauses a transport for named reasons and resumes it when none is left."""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from gateway.http.flow import BACKPRESSURE, ReadGate


def test_reading_resumes_only_when_every_reason_is_lifted():
    transport = StringTransport()
    gate = ReadGate(transport)
    assert not gate.paused and transport.producerState == "producing"
    gate.pause("pipeline")
    gate.pause(BACKPRESSURE)
    assert gate.paused and transport.producerState == "paused"
    gate.resume("pipeline")
    assert gate.paused and transport.producerState == "paused"
    gate.resume("pipeline")  # (a reason lifted twice changes nothing)
    assert gate.paused
    gate.resume(BACKPRESSURE)
    assert not gate.paused and transport.producerState == "producing"


def test_clear_lifts_every_reason():
    transport = StringTransport()
    gate = ReadGate(transport)
    gate.pause("connecting")
    gate.pause("upgrade")
    gate.clear()
    assert not gate.paused and transport.producerState == "producing"
    gate.pause("closing")
    assert gate.paused and transport.producerState == "paused"
