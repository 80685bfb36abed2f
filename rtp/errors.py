"""Errors raised by the sans-I/O media code.

Each parser raises one error type with a fixed message per failure, so that a caller can count
and drop bad input without crashing (and tests can assert the exact text).
"""

from __future__ import annotations


class RtpError(ValueError):
    """Bytes that are not a valid RTP packet or RFC 4571 frame."""


class PsError(ValueError):
    """Bytes that are not valid MPEG-PS (or a stream the demuxer refuses, with the reason)."""
