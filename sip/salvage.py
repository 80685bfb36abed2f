"""Answer a request that failed to parse (RFC 3261 section 21.4.1 "400 Bad Request").

A malformed request still deserves an error response when enough of it survives to address one:
the start line must be a request line and Via, From, To, Call-ID and CSeq must be present as
lines. Anything less is dropped by the caller (and counted); a response is never answered.
"""

from __future__ import annotations

from .message import MAX_MESSAGE_SIZE, REASONS, header_key

__all__ = ["salvage_error_response"]

_COPIED = ("via", "from", "to", "call-id", "cseq")


def salvage_error_response(data: bytes, status: int, reason: str | None = None) -> bytes | None:
    """Build `status` as bytes for the request in `data`, or None if it cannot be addressed."""
    head = data[:MAX_MESSAGE_SIZE]
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        head = head[:end]
    text = head.decode("utf-8", "replace")
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].startswith("SIP/") or lines[0].count(" ") < 2:
        return None
    found: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line or line[0] in " \t":
            continue
        name, colon, value = line.partition(":")
        key = header_key(name.strip())
        if colon and key in _COPIED:
            # CR, LF or NUL smuggled into a value must not reach the wire.
            clean = "".join(ch for ch in value.strip() if ch >= " " or ch == "\t")
            found.setdefault(key, []).append(f"{name.strip()}: {clean}")
    if any(key not in found for key in _COPIED):
        return None
    phrase = reason or REASONS.get(status, "Bad Request")
    phrase = "".join(ch for ch in phrase if ch >= " ")
    out = [f"SIP/2.0 {status} {phrase}"]
    for key in _COPIED:
        out.extend(found[key])
    out.append("Content-Length: 0")
    return ("\r\n".join(out) + "\r\n\r\n").encode("utf-8", "replace")
