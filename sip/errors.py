"""Errors raised by the sans-I/O SIP stack.

The contract (as in h11): any bytes handed to a parser either parse or raise `ParseError`;
anything else escaping a parser is a bug. Each error carries the status code the adapter should
answer with, so the transport can turn it into a response or a counted drop.
"""

from __future__ import annotations


class SipError(Exception):
    """Base class of every error the `sip` package raises."""


class ParseError(SipError, ValueError):
    """The peer sent bytes that are not a well-formed SIP message (or MANSCDP body)."""

    status_hint: int = 400

    def __init__(self, reason: str, status_hint: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status_hint is not None:
            self.status_hint = status_hint


class MessageTooLarge(ParseError):
    """A message, header block or body exceeds the configured cap (64 KiB by default)."""

    status_hint = 513


class LocalProtocolError(SipError):
    """Our own code misused the API (for example built a response without a Via)."""
