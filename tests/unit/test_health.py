"""gateway.core.health: the rise/fall rule, the check's request and its verdict."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from gateway.core.health import DOWN, UP, HealthState, check_request, status_failure


def play(results: str, rise: int, fall: int, healthy: bool = True) -> tuple[str, HealthState]:
    """Feed ``results`` ("+" passed, "-" failed); the transitions as a string: "." none, "d" down, "u" up."""
    state = HealthState(healthy)
    marks = {None: ".", DOWN: "d", UP: "u"}
    transitions = "".join(marks[state.record(result == "+", rise, fall)] for result in results)
    return transitions, state


@pytest.mark.parametrize("rise, fall, results, transitions, healthy", [
    # starts healthy: passes change nothing
    (2, 3, "", "", True),
    (2, 3, "++++", "....", True),
    # fall consecutive failures take it out, and only consecutive ones count
    (2, 3, "---", "..d", False),
    (2, 3, "--+--+--", "........", True),
    (2, 3, "--+---", ".....d", False),
    (1, 1, "-", "d", False),
    # further failures while down change nothing
    (2, 3, "-----", "..d..", False),
    # rise consecutive passes bring it back; a failure restarts the count
    (2, 3, "---++", "..d.u", True),
    (2, 3, "---+-++", "..d...u", True),
    (3, 1, "-++-+++", "d.....u", True),
    (1, 1, "-+-+", "dudu", True),
    # counts restart after each transition
    (2, 2, "--++--++", ".d.u.d.u", True),
    (2, 2, "--+++-", ".d.u..", True),
])
def test_rise_and_fall(rise, fall, results, transitions, healthy):
    got, state = play(results, rise, fall)
    assert got == transitions
    assert state.healthy is healthy


def test_a_server_may_start_unhealthy():
    transitions, state = play("++", rise=2, fall=2, healthy=False)
    assert (transitions, state.healthy) == (".u", True)
    assert play("---", rise=2, fall=2, healthy=False)[0] == "..."


def test_new_thresholds_apply_to_the_run_under_way():
    """rise/fall come with every result, so that a reload applies at once."""
    state = HealthState()
    assert state.record(False, 2, 5) is None
    assert state.record(False, 2, 5) is None
    assert state.record(False, 2, 2) == DOWN  # three failures >= the new fall of 2


def test_repr_shows_the_counts():
    state = HealthState()
    state.record(False, 2, 3)
    assert repr(state) == "<HealthState healthy passes=0 failures=1>"


def results_and_thresholds():
    return st.tuples(st.lists(st.booleans(), max_size=60), st.integers(1, 6), st.integers(1, 6))


@given(results_and_thresholds())
def test_state_changes_only_after_exactly_rise_or_fall_consecutive_results(case):
    results, rise, fall = case
    state = HealthState()
    healthy = True
    run = 0  # consecutive results that disagree with the current verdict
    for passed in results:
        disagrees = passed != healthy
        run = run + 1 if disagrees else 0
        transition = state.record(passed, rise, fall)
        needed = rise if passed else fall
        if disagrees and run == needed:
            assert transition == (UP if passed else DOWN)
            healthy, run = passed, 0
        else:
            assert transition is None
        assert state.healthy is healthy


@given(results_and_thresholds())
def test_transitions_alternate_starting_with_down(case):
    results, rise, fall = case
    state = HealthState()
    transitions = [t for t in (state.record(passed, rise, fall) for passed in results) if t is not None]
    assert transitions == [DOWN, UP] * (len(transitions) // 2) + [DOWN] * (len(transitions) % 2)
    assert state.healthy is (not transitions or transitions[-1] == UP)


@given(st.lists(st.booleans(), max_size=40), st.integers(1, 5), st.integers(1, 5))
def test_the_verdict_is_that_of_the_last_long_enough_run(results, rise, fall):
    """Once the last max(rise, fall) results agree, the verdict is theirs."""
    state = HealthState()
    for passed in results:
        state.record(passed, rise, fall)
    tail = max(rise, fall)
    if len(results) >= tail and len(set(results[-tail:])) == 1:
        assert state.healthy is results[-1]


def test_the_request():
    assert check_request("/healthz", "127.0.0.1:8001") == (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8001\r\nConnection: close\r\n"
        b"User-Agent: gateway-health-check\r\nAccept: */*\r\n\r\n")


@pytest.mark.parametrize("path, host, line, host_header", [
    ("/status?full=1", "127.0.0.1:8001", b"GET /status?full=1 HTTP/1.1", b"Host: 127.0.0.1:8001"),
    ("/", "[::1]:8000", b"GET / HTTP/1.1", b"Host: [::1]:8000"),
    ("/sant\u00e9", "localhost:80", b"GET /sant%C3%A9 HTTP/1.1", b"Host: localhost:80"),
])
def test_the_request_line_and_host(path, host, line, host_header):
    lines = check_request(path, host).split(b"\r\n")
    assert lines[0] == line
    assert lines[1] == host_header


@pytest.mark.parametrize("status, expect, failure", [
    (200, 200, None),
    (204, 204, None),
    (503, 200, "status 503, expected 200"),
    (200, 204, "status 200, expected 204"),
    (301, 200, "status 301, expected 200"),
])
def test_status_failure(status, expect, failure):
    assert status_failure(status, expect) == failure
