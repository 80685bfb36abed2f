"""Header fields: a case-insensitive multimap that keeps names as written (RFC 3261 section 7.3).

Names are looked up case-insensitively, with the compact forms of RFC 3261 section 7.3.3 (and
later extensions) mapped to their long names. Each stored field is one header line as received,
so that re-serialising keeps the sender's spelling; list-valued headers are split on demand.
"""

from __future__ import annotations

from collections.abc import Iterator

from .uri import split_top_level

__all__ = ["COMPACT_FORMS", "LIST_HEADERS", "Headers", "header_key"]

COMPACT_FORMS = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

# Headers whose grammar is a comma-separated list, so that `Via: a, b` is two values.
# Others (Authorization, WWW-Authenticate, Date, ...) contain commas inside one value.
LIST_HEADERS = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "content-encoding",
        "in-reply-to",
    }
)


_KEY_CACHE: dict[str, str] = {}
_KEY_CACHE_LIMIT = 512  # header names as spelled by peers; bounded against hostile variety


def header_key(name: str) -> str:
    """The lookup key of a header name: lower case, compact form expanded."""
    key = _KEY_CACHE.get(name)
    if key is None:
        lowered = name.lower()
        key = COMPACT_FORMS.get(lowered, lowered)
        if len(_KEY_CACHE) < _KEY_CACHE_LIMIT:
            _KEY_CACHE[name] = key
    return key


class Headers:
    """An ordered, case-insensitive multimap of header fields.

    Each stored field is one header line as received (`Via: a, b` stays one line); `get_all`
    splits list-valued headers into their values.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: list[tuple[str, str]] | None = None) -> None:
        # (key, name-as-written, value)
        self._fields: list[tuple[str, str, str]] = []
        for name, value in fields or ():
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        self._fields.append((header_key(name), name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every field of this name by one, at the position of the first."""
        key = header_key(name)
        for i, (k, _, _) in enumerate(self._fields):
            if k == key:
                self._fields[i] = (key, name, value)
                self._fields[i + 1 :] = [f for f in self._fields[i + 1 :] if f[0] != key]
                return
        self._fields.append((key, name, value))

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._fields = [f for f in self._fields if f[0] != key]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of a header (the first list element for list headers)."""
        key = header_key(name)
        for k, _, v in self._fields:
            if k == key:
                if key in LIST_HEADERS and "," in v:
                    return split_top_level(v, ",")[0].strip()
                return v
        return default

    def fields(self) -> list[tuple[str, str, str]]:
        """The stored fields as (key, name as written, value), for serialisers."""
        return self._fields

    def get_all(self, name: str) -> list[str]:
        key = header_key(name)
        values: list[str] = []
        for k, _, v in self._fields:
            if k != key:
                continue
            if key in LIST_HEADERS:
                values.extend(p.strip() for p in split_top_level(v, ",") if p.strip())
            else:
                values.append(v)
        return values

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = header_key(name)
        return any(k == key for k, _, _ in self._fields)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _, name, value in self._fields:
            yield name, value

    def __len__(self) -> int:
        return len(self._fields)

    def normalized(self) -> list[tuple[str, list[str]]]:
        """Fields as (key, values) in order, for comparing two messages for equivalence."""
        out: list[tuple[str, list[str]]] = []
        for key, _, value in self._fields:
            if key in LIST_HEADERS:
                vals = [p.strip() for p in split_top_level(value, ",") if p.strip()]
            else:
                vals = [value.strip()]
            if out and out[-1][0] == key and key in LIST_HEADERS:
                out[-1][1].extend(vals)
            else:
                out.append((key, vals))
        return out

    def copy(self) -> Headers:
        new = Headers()
        new._fields = list(self._fields)
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self.normalized() == other.normalized()

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"
