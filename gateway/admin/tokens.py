"""The admin bearer token file, read the same way by the gateway and by the CLI."""

from __future__ import annotations


class TokenError(Exception):
    """The token file cannot be used; the message says why, naming the file."""


def read_token(path: str) -> str:
    """The token: the first line of *path*, stripped (blocking: start-up and CLI only)."""
    try:
        with open(path, encoding="utf-8") as stream:
            token = stream.readline().strip()
    except OSError as error:
        raise TokenError(f"cannot read the admin token file {path}: {error.strerror}") from None
    if not token:
        raise TokenError(f"the admin token file {path} is empty")
    return token
