"""gateway.core.accesslog: one nginx-style line per request."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given, strategies as st

from gateway.accesslog import whole_line_chunks
from gateway.core.accesslog import AccessLogFormatter, AccessRecord

# 27/Nov/2026:20:13:04 +0000
STARTED = float(calendar.timegm((2026, 11, 27, 20, 13, 4)))


def record(**fields) -> AccessRecord:
    values = dict(client_ip="127.0.0.1", started=STARTED, request_line="GET /api/users HTTP/1.1", status=200,
                  body_bytes=512, referer="-", user_agent="curl/8.5.0", upstream="127.0.0.1:9001",
                  upstream_time=0.003)
    values.update(fields)
    return AccessRecord(**values)


def test_the_issue_example_exactly():
    line = AccessLogFormatter().format(record(), STARTED + 0.004)
    assert line == ('127.0.0.1 - - [27/Nov/2026:20:13:04 +0000] "GET /api/users HTTP/1.1" 200 512 "-" '
                    '"curl/8.5.0" upstream=127.0.0.1:9001 request_time=0.004 upstream_time=0.003\n')


def test_defaults_of_a_local_response():
    rec = AccessRecord(client_ip="10.0.0.5", started=STARTED + 0.25, request_line="GET /nope HTTP/1.0",
                       status=404, body_bytes=24)
    assert AccessLogFormatter().format(rec, STARTED + 0.25) == (
        '10.0.0.5 - - [27/Nov/2026:20:13:04 +0000] "GET /nope HTTP/1.0" 404 24 "-" "-" '
        'upstream=- request_time=0.000 upstream_time=-\n')


@pytest.mark.parametrize("when, stamp", [
    ((2026, 1, 1, 0, 0, 0), "01/Jan/2026:00:00:00 +0000"),
    ((2024, 2, 29, 23, 59, 59), "29/Feb/2024:23:59:59 +0000"),
    ((2025, 12, 31, 9, 5, 7), "31/Dec/2025:09:05:07 +0000"),
    ((1999, 6, 15, 12, 30, 45), "15/Jun/1999:12:30:45 +0000"),
])
def test_timestamp(when, stamp):
    formatter = AccessLogFormatter()
    seconds = calendar.timegm(when)
    assert formatter.timestamp(seconds + 0.999) == stamp
    assert formatter.timestamp(seconds) == stamp


def test_timestamp_cache_follows_the_clock():
    formatter = AccessLogFormatter()
    assert formatter.timestamp(STARTED) == "27/Nov/2026:20:13:04 +0000"
    assert formatter.timestamp(STARTED + 1) == "27/Nov/2026:20:13:05 +0000"
    assert formatter.timestamp(STARTED) == "27/Nov/2026:20:13:04 +0000"


@pytest.mark.parametrize("field, value, shown", [
    ("user_agent", 'say "hi"', r'"say \x22hi\x22"'),
    ("user_agent", "back\\slash", r'"back\x5Cslash"'),
    ("user_agent", "tab\there", r'"tab\x09here"'),
    ("referer", "http://x/\nINJECTED", r'"http://x/\x0AINJECTED"'),
    ("request_line", 'GET /"x" HTTP/1.1', r'"GET /\x22x\x22 HTTP/1.1"'),
    ("user_agent", "Mozilla/5.0 (X11; Linux)", '"Mozilla/5.0 (X11; Linux)"'),
])
def test_quoted_fields_escaped(field, value, shown):
    line = AccessLogFormatter().format(record(**{field: value}), STARTED + 0.004)
    assert shown in line
    assert line.count("\n") == 1 and line.endswith("\n")


@pytest.mark.parametrize("elapsed, upstream_time, text", [
    (0.0, 0.0, "request_time=0.000 upstream_time=0.000"),
    (1.5, 1.4994, "request_time=1.500 upstream_time=1.499"),
    (12.3456, None, "request_time=12.346 upstream_time=-"),
])
def test_times(elapsed, upstream_time, text):
    line = AccessLogFormatter().format(record(upstream_time=upstream_time), STARTED + elapsed)
    assert line.endswith(text + "\n")


@given(st.text(max_size=60), st.text(max_size=60), st.text(max_size=60))
def test_a_line_is_always_one_line_with_three_quoted_fields(request_line, referer, user_agent):
    line = AccessLogFormatter().format(record(request_line=request_line, referer=referer, user_agent=user_agent),
                                       STARTED + 0.004)
    assert line.endswith("\n") and "\n" not in line[:-1] and "\r" not in line
    assert line.count('"') == 6


@pytest.mark.parametrize("lines, limit, expected", [
    ([], 10, []),
    (["ab\n", "cd\n"], 10, [b"ab\ncd\n"]),
    (["abc\n", "def\n", "gh\n"], 8, [b"abc\ndef\n", b"gh\n"]),
    (["a\n", "a very long line\n", "b\n"], 4, [b"a\n", b"a very long line\n", b"b\n"]),
    (["\u00e9\n", "x\n"], 3, [b"\xc3\xa9\n", b"x\n"]),  # limits count bytes, not characters
])
def test_whole_line_chunks_never_split_a_line_or_exceed_the_limit(lines, limit, expected):
    assert whole_line_chunks(lines, limit) == expected
