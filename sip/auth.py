"""HTTP Digest authentication for SIP (RFC 2617, RFC 3261 section 22, GB/T 28181 section 9.1).

Server side: `build_challenge` makes the WWW-Authenticate value, `NonceFactory` issues stateless
nonces that expire and are bound to one client, `NonceTracker` adds what stateless nonces cannot
do (each nonce used once, or with a rising `nc`), `verify` checks an Authorization header parsed
by `parse_digest`.
Client side (camera simulator, registration to an upper platform): `build_authorization`.

GB/T 28181 devices hash the `uri` they put in the Authorization header, which often differs from
the Request-URI, so `verify` uses the credentials' own `uri`. The challenge usually offers
`qop="auth"` but many devices answer in the RFC 2069 form without qop; both are accepted.
Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections import deque
from collections.abc import Callable, Mapping
from typing import Literal

from .errors import LocalProtocolError, ParseError

__all__ = [
    "parse_digest",
    "compute_response",
    "compute_ha1",
    "build_challenge",
    "build_authorization",
    "verify",
    "NonceFactory",
    "NonceStatus",
    "NonceTracker",
    "SUPPORTED_ALGORITHMS",
]

_Hash = Callable[[bytes], "hashlib._Hash"]

# algorithm name (upper case) -> (hash constructor, session variant)
_ALGORITHMS: dict[str, tuple[_Hash, bool]] = {
    "MD5": (hashlib.md5, False),
    "MD5-SESS": (hashlib.md5, True),
    "SHA-256": (hashlib.sha256, False),
    "SHA-256-SESS": (hashlib.sha256, True),
}
SUPPORTED_ALGORITHMS = frozenset(_ALGORITHMS)

# One `name = value` pair: the value is a quoted string (group 2) or a token (group 3) and must
# be followed by a separator (comma or whitespace) or the end. Separators before it are skipped.
# Where no pair starts, group 4 takes the one character there that is no separator: garbage.
# `findall` thus reads the list in one pass, pair by pair as `match` from each pair's end would.
_PARAMS = re.compile(
    r"[\s,]*(?:([A-Za-z0-9_.!%*+`'~-]+)[ \t]*=[ \t]*"
    r'(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([^\s,"]*))(?=[\s,]|$)|([^\s,]))',
    re.DOTALL,
)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_NEEDS_QUOTING = re.compile(r'["\\]')


def parse_digest(value: str) -> dict[str, str]:
    """Parse `Digest name=value, name="quoted value", ...` into a dict with lower-case names.

    Quoted strings lose their quotes and backslash escapes; whitespace and commas between pairs
    are tolerated liberally. Raises `ParseError` for another scheme, a missing or unterminated
    value, a duplicated parameter or trailing garbage.
    """
    text = value.strip()
    if text[:6].lower() != "digest" or (len(text) > 6 and not text[6].isspace()):
        raise ParseError("authentication scheme is not Digest")
    found = _PARAMS.findall(text, 6)
    # A quoted value is group 2, a token group 3; a group that took no part is "".
    params = {name.lower(): quoted or token for name, quoted, token, _ in found}
    if len(params) != len(found) or "" in params:  # garbage (no name), or a name twice
        seen: set[str] = set()
        for name, _, _, garbage in found:
            if garbage:
                raise ParseError("malformed Digest parameter list")
            if name.lower() in seen:
                raise ParseError(f"duplicate Digest parameter {name.lower()!r}")
            seen.add(name.lower())
    if not params:
        raise ParseError("empty Digest parameter list")
    if "\\" in text:
        for name, quoted, _, _ in found:
            if "\\" in quoted:
                params[name.lower()] = _ESCAPE.sub(r"\1", quoted)
    return params


def _hex(fn: _Hash, text: str) -> str:
    return fn(text.encode("utf-8")).hexdigest()


def _format_nc(nc: int | str) -> str:
    return f"{nc:08x}" if isinstance(nc, int) else nc


def compute_response(
    *,
    username: str,
    realm: str,
    password: str | None = None,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: int | str | None = None,
    cnonce: str | None = None,
    algorithm: str = "MD5",
    ha1: str | None = None,
) -> str:
    """The Digest `response` value (hex).

    `HA1 = H(username:realm:password)` (or the precomputed `ha1`), `HA2 = H(method:uri)`;
    without qop `H(HA1:nonce:HA2)`, with qop=auth `H(HA1:nonce:nc:cnonce:qop:HA2)`. `nc` may be
    an int (formatted as 8 hex digits) or the string as sent. Raises `ValueError` for an
    unsupported algorithm or qop (auth-int needs the body and is not used by GB/T 28181).
    """
    entry = _ALGORITHMS.get(algorithm.upper())
    if entry is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    fn, session = entry
    if ha1 is None:
        if password is None:
            raise ValueError("either password or ha1 is required")
        ha1 = _hex(fn, f"{username}:{realm}:{password}")
    if session:
        ha1 = _hex(fn, f"{ha1}:{nonce}:{cnonce or ''}")
    ha2 = _hex(fn, f"{method}:{uri}")
    if qop is None:
        return _hex(fn, f"{ha1}:{nonce}:{ha2}")
    if qop.lower() != "auth":
        raise ValueError(f"unsupported qop {qop!r}")
    if nc is None or cnonce is None:
        raise ValueError("qop=auth needs nc and cnonce")
    return _hex(fn, f"{ha1}:{nonce}:{_format_nc(nc)}:{cnonce}:{qop}:{ha2}")


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """`H(username:realm:password)`, which a registrar may store instead of the password."""
    entry = _ALGORITHMS.get(algorithm.upper())
    if entry is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return _hex(entry[0], f"{username}:{realm}:{password}")


def verify(
    credentials: Mapping[str, str],
    *,
    method: str,
    password: str | None = None,
    ha1: str | None = None,
) -> bool:
    """Check the `response` of parsed Authorization credentials against the password.

    Uses the credentials' own `username`, `realm`, `nonce` and `uri`; qop=auth and the form
    without qop are both accepted (also when the challenge offered qop and the client ignored
    it). Checking that the nonce is ours and fresh (`NonceFactory.check`), that the username
    belongs to the device and that the realm is ours is the caller's job. Missing parameters,
    an unsupported algorithm or qop, or a wrong response give False. `ha1` may replace the
    password (see `compute_ha1`).
    """
    try:
        username = credentials["username"]
        realm = credentials["realm"]
        nonce = credentials["nonce"]
        uri = credentials["uri"]
        given = credentials["response"]
    except KeyError:
        return False
    qop = credentials.get("qop") or None
    try:
        expected = compute_response(
            username=username,
            realm=realm,
            password=password,
            method=method,
            uri=uri,
            nonce=nonce,
            qop=qop,
            nc=credentials.get("nc"),
            cnonce=credentials.get("cnonce"),
            algorithm=credentials.get("algorithm") or "MD5",
            ha1=ha1,
        )
    except ValueError:
        return False
    # Hex digests compare case-insensitively; compare_digest needs ASCII on both sides.
    given_b = given.lower().encode("ascii", "replace")
    return hmac.compare_digest(expected.encode("ascii"), given_b)


def _quote(value: str) -> str:
    if _NEEDS_QUOTING.search(value):
        value = _NEEDS_QUOTING.sub(lambda m: "\\" + m.group(0), value)
    return f'"{value}"'


def build_challenge(
    realm: str,
    nonce: str,
    *,
    qop: bool = True,
    stale: bool = False,
    algorithm: str = "MD5",
    opaque: str | None = None,
) -> str:
    """The WWW-Authenticate value, e.g. `Digest realm="4101050000",nonce="...",algorithm=MD5,
    qop="auth"`, plus `,stale=true` when the client's nonce merely expired (RFC 2617 3.2.1)."""
    parts = [f"Digest realm={_quote(realm)}", f"nonce={_quote(nonce)}", f"algorithm={algorithm}"]
    if qop:
        parts.append('qop="auth"')
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    if stale:
        parts.append("stale=true")
    return ",".join(parts)


def build_authorization(
    challenge: Mapping[str, str],
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nc: int = 1,
) -> str:
    """The Authorization value answering a parsed WWW-Authenticate `challenge`.

    Uses qop=auth when the challenge offers it (a comma-separated list), echoes `opaque`, and
    keeps the challenge's algorithm spelling. Raises `LocalProtocolError` when the challenge
    lacks realm or nonce or asks for something we cannot do.
    """
    try:
        realm = challenge["realm"]
        nonce = challenge["nonce"]
    except KeyError as exc:
        raise LocalProtocolError(f"challenge without {exc.args[0]}") from None
    algorithm = challenge.get("algorithm") or "MD5"
    offered = {q.strip().lower() for q in challenge.get("qop", "").split(",")}
    qop = "auth" if "auth" in offered else None
    try:
        response = compute_response(
            username=username,
            realm=realm,
            password=password,
            method=method,
            uri=uri,
            nonce=nonce,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            algorithm=algorithm,
        )
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None
    parts = [
        f"Digest username={_quote(username)}",
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
        f'response="{response}"',
        f"algorithm={algorithm}",
    ]
    if qop is not None:
        parts += [f"cnonce={_quote(cnonce)}", "qop=auth", f"nc={_format_nc(nc)}"]
    if "opaque" in challenge:
        parts.append(f"opaque={_quote(challenge['opaque'])}")
    return ", ".join(parts)


# -- nonces -------------------------------------------------------------------------------------

NonceStatus = Literal["ok", "stale", "invalid", "replayed"]

_NONCE_BODY = struct.Struct("!qI")  # issue time in ms (signed), per-factory counter
_MAC_SIZE = 8
_NONCE_HEX_LEN = 2 * (_NONCE_BODY.size + _MAC_SIZE)
# A nonce issued up to this far "in the future" is accepted (float rounding between callers).
_FUTURE_SLACK_MS = 1000


class NonceFactory:
    """Issues and checks nonces that need no server-side state.

    A nonce is 40 lower-case hex digits: the issue time (milliseconds of the caller's clock,
    normally monotonic), a counter that makes every nonce of this factory distinct, and a
    64-bit keyed BLAKE2b MAC over both and over `bind`, a text naming the one client the
    nonce is for (the registrar binds the source address and the device ID). `check` answers
    "invalid" for anything we did not sign or signed for another `bind`, "stale" once
    `lifetime_s` has passed (the registrar then challenges again with `stale=true`, so the
    device retries without re-prompting), and "ok" otherwise. A correctly signed nonce from the
    future (the clock restarted while the secret was kept) is also "stale". Replays within the
    lifetime are not detected here: that needs state, see `NonceTracker`.
    """

    __slots__ = ("_mac", "_lifetime_ms", "_counter")

    def __init__(self, secret: bytes, lifetime_s: float = 300.0) -> None:
        if len(secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes")
        if lifetime_s <= 0:
            raise ValueError("nonce lifetime must be positive")
        # BLAKE2b in its keyed mode is a MAC by design (RFC 7693 section 2.9), and one pass
        # where HMAC takes two: about 0.45 µs a nonce here against 1.2. Its key is at most 64
        # bytes; a longer secret is hashed down to that.
        key = secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()
        self._mac = hashlib.blake2b(key=key, digest_size=_MAC_SIZE)
        self._lifetime_ms = int(lifetime_s * 1000)
        self._counter = 0

    @property
    def lifetime_s(self) -> float:
        return self._lifetime_ms / 1000

    def _sign(self, body: bytes, bind: str) -> bytes:
        mac = self._mac.copy()
        mac.update(body)  # fixed size, so `bind` cannot be shifted into it
        if bind:
            mac.update(bind.encode("utf-8", "surrogatepass"))
        return mac.digest()

    def make(self, now: float, bind: str = "") -> str:
        """A fresh nonce issued at `now` (seconds) for the client named by `bind`."""
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        body = _NONCE_BODY.pack(round(now * 1000), self._counter)
        return (body + self._sign(body, bind)).hex()

    def issued_at(self, nonce: str) -> float:
        """The issue time of a nonce this factory made (unchecked: call `check` first)."""
        issued_ms: int = _NONCE_BODY.unpack(bytes.fromhex(nonce[: 2 * _NONCE_BODY.size]))[0]
        return issued_ms / 1000

    def check(self, nonce: str, now: float, bind: str = "") -> NonceStatus:
        """Classify `nonce` at `now`: "ok", "stale" (ours but expired) or "invalid" (not ours,
        or issued for another `bind`)."""
        if len(nonce) != _NONCE_HEX_LEN:
            return "invalid"
        try:
            raw = bytes.fromhex(nonce)
        except ValueError:
            return "invalid"
        body, mac = raw[: _NONCE_BODY.size], raw[_NONCE_BODY.size :]
        if not hmac.compare_digest(self._sign(body, bind), mac):
            return "invalid"
        issued_ms, _ = _NONCE_BODY.unpack(body)
        age_ms = round(now * 1000) - issued_ms
        if age_ms > self._lifetime_ms or age_ms < -_FUTURE_SLACK_MS:
            return "stale"
        return "ok"


# A nonce used without qop (RFC 2069 form) is spent: above every nc a client can send.
_SPENT = 1 << 32


class NonceTracker:
    """Nonces bound to one client, each usable once, or with a rising `nc` (RFC 2617 3.2.2).

    `make` issues a nonce (see `NonceFactory`) and remembers it; `check` classifies the nonce
    and `nc` of a request before its response is verified, and `use` records a request that
    was verified. With qop=auth a nonce serves every request whose `nc` (8 hex digits) is above
    the highest one already used; without qop (the RFC 2069 form) it serves one request. A
    repeated or lower `nc`, or a second use without qop, is "replayed": a captured request sent
    again. A nonce we signed but no longer remember is "stale", so the client is challenged
    afresh; remembering is bounded by `max_nonces`, the oldest forgotten first, and nonces past
    their lifetime are dropped as new ones are made. Time is the caller's `now`, as for the
    factory.
    """

    __slots__ = ("factory", "max_nonces", "_uses", "_order")

    def __init__(self, secret: bytes, lifetime_s: float = 300.0, max_nonces: int = 100_000):
        if max_nonces < 1:
            raise ValueError("max_nonces must be at least 1")
        self.factory = NonceFactory(secret, lifetime_s)
        self.max_nonces = max_nonces
        self._uses: dict[str, int] = {}  # nonce -> highest nc used (0: none, _SPENT: no qop)
        self._order: deque[str] = deque()  # the same nonces, oldest first

    def __len__(self) -> int:
        return len(self._uses)

    def make(self, now: float, bind: str) -> str:
        """A fresh nonce for the client `bind`, remembered until it expires or is evicted."""
        order, uses = self._order, self._uses
        horizon = now - self.factory.lifetime_s
        # Drop what expired (at most two per call keeps the cost flat), then make room.
        for _ in range(2):
            if not order or self.factory.issued_at(order[0]) >= horizon:
                break
            uses.pop(order.popleft(), None)
        while len(order) >= self.max_nonces:
            uses.pop(order.popleft(), None)
        nonce = self.factory.make(now, bind)
        uses[nonce] = 0
        order.append(nonce)
        return nonce

    def check(self, nonce: str, now: float, bind: str, nc: str | None) -> NonceStatus:
        """Classify a request's `nonce` and `nc` (None for the form without qop): "ok",
        "stale" (expired, or forgotten), "invalid" (not ours, for another client, or a
        malformed nc) or "replayed"."""
        status = self.factory.check(nonce, now, bind)
        if status != "ok":
            return status
        used = self._uses.get(nonce.lower())
        if used is None:
            return "stale"
        if nc is None:
            return "ok" if used == 0 else "replayed"
        count = _parse_nc(nc)
        if count is None:
            return "invalid"
        return "ok" if count > used else "replayed"

    def use(self, nonce: str, nc: str | None) -> None:
        """Record a verified request; `check` must have answered "ok" for it."""
        key = nonce.lower()
        used = self._uses.get(key)
        if used is None:
            return
        count = _SPENT if nc is None else _parse_nc(nc)
        if count is not None and count > used:
            self._uses[key] = count


def _parse_nc(nc: str) -> int | None:
    """The nonce count, 8 hex digits (RFC 2617 3.2.2); None when it is not that."""
    if len(nc) != 8 or not _HEX_DIGITS.issuperset(nc):
        return None
    return int(nc, 16)


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
