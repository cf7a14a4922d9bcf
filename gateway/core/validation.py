"""Strict request rules (RFC 9112) beyond what llhttp already refuses, and path normalisation.

llhttp (in its strict default mode) refuses bare LF, obs-fold, a space before
the colon, invalid characters in names and values, invalid chunk sizes, and
Content-Length together with Transfer-Encoding.  The rules here close what is
left: framing headers that the gateway and a backend could read differently,
Host, versions and request-targets.  Routing uses the normalised path, so
``/web/../api/x`` or ``/%61pi/x`` reach exactly the route ``/api/x`` reaches.
"""

from __future__ import annotations

import re

Problem = tuple[int, bytes, str]

_UNRESERVED_ESCAPE = re.compile(r"%(2[dDeE]|3[0-9]|4[1-9a-fA-F]|5[0-9aA]|5[fF]|6[1-9a-fA-F]|7[0-9aA]|7[eE])")
_BAD_ESCAPE = re.compile(r"%(?![0-9a-fA-F]{2})")
#: An origin-form request-target: "/" then visible ASCII (no spaces, controls or raw non-ASCII) except "#".
#: (One expression: ``b"#" in target`` would cost more, as bytes' ``in`` first tries the operand as an integer.)
_ORIGIN_FORM_TARGET = re.compile(rb"/[!-\x22\x24-~]*")
#: RFC 3986 host (reg-name or IP literal) with an optional port.
_HOST = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+,;=%-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")
#: Host values found valid already (a site sees a handful): the expression runs once for each.
_VALID_HOSTS: set[bytes] = set()
_VALID_HOSTS_KEPT = 1024


def request_problem(version: bytes, hosts: list[bytes], content_lengths: list[bytes],
                    transfer_encodings: list[bytes], target: bytes) -> Problem | None:
    """Why a request that llhttp parsed must still be refused, or None."""
    if version not in (b"1.1", b"1.0"):
        return 505, b"HTTP Version Not Supported", "HTTP/1.0 and HTTP/1.1 only"
    if len(hosts) > 1:
        return 400, b"Bad Request", "more than one Host header"
    if not hosts and version == b"1.1":
        return 400, b"Bad Request", "missing Host header"
    if hosts and hosts[0] not in _VALID_HOSTS:
        if not _HOST.fullmatch(hosts[0]):
            return 400, b"Bad Request", "invalid Host header"
        if len(_VALID_HOSTS) < _VALID_HOSTS_KEPT:
            _VALID_HOSTS.add(hosts[0])
    if len(content_lengths) > 1:
        return 400, b"Bad Request", "more than one Content-Length header"
    if transfer_encodings and (len(transfer_encodings) > 1 or transfer_encodings[0] != b"chunked"):
        return 400, b"Bad Request", 'Transfer-Encoding must be exactly "chunked"'
    if transfer_encodings and content_lengths:
        return 400, b"Bad Request", "both Content-Length and Transfer-Encoding"
    if not _ORIGIN_FORM_TARGET.fullmatch(target):
        return 400, b"Bad Request", "the request-target must be a path starting with /"
    return None


def normalize_path(path: str) -> str | None:
    """Resolve dot-segments and decode escaped unreserved characters; None if the path leaves the root.

    ``/a/./b/../c`` -> ``/a/c``, ``/%61pi`` -> ``/api``.  Other escapes
    (``%2F``, ``%20``...) are kept as they are: decoding them would change
    what the path means.
    """
    if "%" in path:
        if _BAD_ESCAPE.search(path):
            return None
        path = _UNRESERVED_ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), path)
    if "/." not in path:
        return path
    output: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if not output:
                return None
            output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)
