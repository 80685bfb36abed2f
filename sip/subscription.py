"""Catalog subscriptions of upper platforms to the node (RFC 6665; GB/T 28181 2016 App. P,
2022 App. N), sans-I/O.

An upstream SUBSCRIBEs with `Event: Catalog` (2022 sends `Catalog;id=<n>`, 2016's examples
`presence`) and a Query/Catalog body; the node answers 200 with the granted Expires and, while
the subscription lasts, sends NOTIFY requests in its dialog when a shared channel changes.
`SubscriptionTable` keeps them:

* `receive(upstream_id, request, now, ...)` takes a SUBSCRIBE and returns a `SubscribeOutcome`:
  the status to answer and, for a 200, the granted expiry and the dialog's To tag
  (`SubscribeOutcome.response` builds the response). A SUBSCRIBE without To tag creates a
  subscription; one with a To tag refreshes the subscription whose dialog it belongs to (481
  when there is none). `Expires: 0` ends the subscription (or, on a new dialog, is a fetch):
  the caller sends the NOTIFY with `terminated`, built from `outcome.subscription`.
* The expiry asked for is clamped to `[min_expires, max_expires]`, `default_expires` when the
  request has none. An upstream holds at most `max_per_upstream` subscriptions; beyond it the
  outcome is 486 with a Warning text. A new subscription of an upstream with the same event
  package and id as one it holds replaces it (an upstream that restarted subscribes again
  with a new Call-ID; the old dialog is dead on its side): `outcome.replaced` names it.
* `expire(now)` removes and returns those past their expiry; the caller NOTIFYs each with
  `terminated;reason=timeout`. `next_deadline()` says when to call it next.
* `Subscription.notify(via, body, now)` builds a NOTIFY in the dialog: `Event` as subscribed,
  `Subscription-State: active;expires=<remaining>` (or `terminated;reason=...`), the MANSCDP
  content type and the next CSeq.

Whether the body is a catalog query (which is what makes `presence` a catalog subscription) is
for the caller to check, with `sip.catalog.catalog_subscription`. Times are the caller's
monotonic `now` in seconds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .catalog import is_catalog_event
from .dialog import Dialog
from .errors import LocalProtocolError, ParseError
from .message import Request, Response
from .relay import warning_value

__all__ = [
    "SubscriptionConfig",
    "Subscription",
    "SubscribeOutcome",
    "SubscriptionTable",
    "parse_event",
    "MANSCDP_CONTENT_TYPE",
    "TERMINATION_REASONS",
]

MANSCDP_CONTENT_TYPE = "Application/MANSCDP+xml"
TERMINATION_REASONS = frozenset(
    {"timeout", "noresource", "deactivated", "probation", "rejected", "giveup"}
)
"""RFC 6665 section 4.1.3 reasons; the node uses timeout and noresource."""

_MAX_EVENT_ID = 64
# RFC 3261 token: the package and id are echoed into our NOTIFYs, so nothing else gets through.
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def parse_event(value: str) -> tuple[str, str | None]:
    """An Event header's package and `id` parameter: `Catalog;id=4021` -> ("Catalog", "4021").

    Raises ParseError unless the package and the `id` are tokens (RFC 3261 section 25.1), the
    `id` at most 64 characters.
    """
    package, *params = value.split(";")
    package = package.strip(" \t")
    if _TOKEN.fullmatch(package) is None:
        raise ParseError(f"bad Event header {value[:60]!r}")
    event_id: str | None = None
    for param in params:
        name, eq, param_value = param.partition("=")
        if name.strip(" \t").lower() == "id":
            event_id = param_value.strip(" \t")
            if not eq or len(event_id) > _MAX_EVENT_ID or _TOKEN.fullmatch(event_id) is None:
                raise ParseError(f"bad Event id in {value[:60]!r}")
            break
    return package, event_id


@dataclass(frozen=True)
class SubscriptionConfig:
    """Bounds of the table. Expiries in seconds; defaults within the standard's range."""

    min_expires: int = 30
    max_expires: int = 86400
    default_expires: int = 3600
    max_per_upstream: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.min_expires <= self.default_expires <= self.max_expires:
            raise LocalProtocolError("need 0 < min_expires <= default_expires <= max_expires")
        if self.max_per_upstream < 1:
            raise LocalProtocolError("max_per_upstream must be at least 1")


@dataclass(eq=False)
class Subscription:
    """One upstream's catalog subscription: its dialog (we are the UAS) and its expiry."""

    upstream_id: str
    package: str
    event_id: str | None
    dialog: Dialog
    expires_at: float
    contact: str | None = None

    @property
    def event(self) -> str:
        """The Event value NOTIFYs carry: the package as subscribed, with its id."""
        return self.package if self.event_id is None else f"{self.package};id={self.event_id}"

    def remaining(self, now: float) -> int:
        """Whole seconds left (rounded up, so never 0 while active), 0 once expired."""
        return max(0, math.ceil(self.expires_at - now))

    def notify(
        self,
        via: str,
        body: bytes,
        now: float,
        *,
        terminated: str | None = None,
        content_type: str = MANSCDP_CONTENT_TYPE,
    ) -> Request:
        """A NOTIFY in the subscription's dialog, with the next CSeq.

        `terminated` is the reason of a final NOTIFY (`timeout`, `noresource`...); without it
        the state is `active;expires=<remaining>`, or `terminated;reason=timeout` once expired.
        """
        if terminated is not None and terminated not in TERMINATION_REASONS:
            raise LocalProtocolError(f"unknown termination reason {terminated!r}")
        remaining = self.remaining(now)
        if terminated is None and remaining == 0:
            terminated = "timeout"
        state = (
            f"active;expires={remaining}"
            if terminated is None
            else f"terminated;reason={terminated}"
        )
        request = self.dialog.request("NOTIFY", via, body, content_type if body else None)
        request.headers.add("Event", self.event)
        request.headers.add("Subscription-State", state)
        if self.contact is not None:
            request.headers.add("Contact", self.contact)
        return request


@dataclass
class SubscribeOutcome:
    """What to answer a SUBSCRIBE with.

    `kind` is `created`, `refreshed`, `ended` (Expires 0: send the final NOTIFY with
    `terminated`), `fetched` (Expires 0 on a new dialog: one NOTIFY, then nothing) or
    `refused`. For a 2xx `expires` is the granted expiry and `to_tag` our tag;
    `subscription` is the subscription concerned (removed already when `ended` or `fetched`),
    `replaced` one it took the place of. A refusal has `status`, `reason` and, for a limit,
    `warning` (a Warning value).
    """

    kind: str
    status: int
    reason: str = "OK"
    expires: int | None = None
    to_tag: str | None = None
    subscription: Subscription | None = None
    replaced: Subscription | None = None
    warning: str | None = None
    extra_headers: list[tuple[str, str]] = field(default_factory=list)

    def response(self, request: Request) -> Response:
        """Our response to `request` with these fields (Expires, To tag, Contact, Warning)."""
        response = Response.for_request(request, self.status, self.reason, to_tag=self.to_tag)
        if self.expires is not None:
            response.headers.add("Expires", str(self.expires))
        if self.subscription is not None and self.subscription.contact is not None:
            response.headers.add("Contact", self.subscription.contact)
        if self.warning is not None:
            response.headers.add("Warning", self.warning)
        for name, value in self.extra_headers:
            response.headers.add(name, value)
        return response


class SubscriptionTable:
    """The catalog subscriptions of every upstream, bounded per upstream.

    `agent` is the node's ID, the Warning agent of refusals; `contact` our Contact value for
    responses and NOTIFYs (None leaves it to the caller).
    """

    def __init__(
        self,
        agent: str,
        config: SubscriptionConfig | None = None,
        *,
        contact: str | None = None,
    ) -> None:
        self.agent = agent
        self.config = config or SubscriptionConfig()
        self.contact = contact
        self._subscriptions: list[Subscription] = []

    def __len__(self) -> int:
        return len(self._subscriptions)

    def of(self, upstream_id: str) -> list[Subscription]:
        """The subscriptions an upstream holds, oldest first."""
        return [s for s in self._subscriptions if s.upstream_id == upstream_id]

    def find(self, message: Request | Response) -> Subscription | None:
        """The subscription whose dialog `message` belongs to (a SUBSCRIBE, a NOTIFY's answer)."""
        return next((s for s in self._subscriptions if s.dialog.match(message)), None)

    def _grant(self, asked: int | None) -> int:
        if asked is None:
            return self.config.default_expires
        return min(max(asked, self.config.min_expires), self.config.max_expires)

    def receive(
        self, upstream_id: str, request: Request, now: float, *, to_tag: str, first_seq: int = 1
    ) -> SubscribeOutcome:
        """Take a SUBSCRIBE from `upstream_id` (the caller checked it comes from that upstream).

        `to_tag` is our tag for a new dialog (ignored when the request has one) and `first_seq`
        the CSeq of our first NOTIFY in it.
        """
        if request.method != "SUBSCRIBE":
            raise LocalProtocolError(
                f"SubscriptionTable.receive needs a SUBSCRIBE, not {request.method}"
            )
        try:
            package, event_id = parse_event(request.headers.get("Event") or "")
            asked = request.expires
        except ParseError as exc:
            return SubscribeOutcome(
                "refused", 400, "Bad Request", warning=self._warning(exc.reason)
            )
        if not is_catalog_event(package):
            return SubscribeOutcome(
                "refused", 489, "Bad Event", extra_headers=[("Allow-Events", "Catalog")]
            )
        if request.to.tag:
            return self._in_dialog(request, now, asked)
        expires = 0 if asked == 0 else self._grant(asked)
        response = Response.for_request(request, 200, to_tag=to_tag)
        try:
            dialog = Dialog.from_request(request, response, first_seq=first_seq)
        except ParseError as exc:
            return SubscribeOutcome(
                "refused", 400, "Bad Request", warning=self._warning(exc.reason)
            )
        subscription = Subscription(
            upstream_id, package, event_id, dialog, now + expires, self.contact
        )
        if expires == 0:
            return SubscribeOutcome(
                "fetched", 200, expires=0, to_tag=to_tag, subscription=subscription
            )
        held = self.of(upstream_id)
        replaced = next(
            (s for s in held if s.package.lower() == package.lower() and s.event_id == event_id),
            None,
        )
        if replaced is not None:
            self._subscriptions.remove(replaced)
        elif len(held) >= self.config.max_per_upstream:
            text = f"catalog subscriptions ({len(held)}/{self.config.max_per_upstream})"
            return SubscribeOutcome("refused", 486, "Busy Here", warning=self._warning(text))
        self._subscriptions.append(subscription)
        return SubscribeOutcome(
            "created",
            200,
            expires=expires,
            to_tag=to_tag,
            subscription=subscription,
            replaced=replaced,
        )

    def _in_dialog(self, request: Request, now: float, asked: int | None) -> SubscribeOutcome:
        subscription = self.find(request)
        if subscription is None:
            return SubscribeOutcome("refused", 481, "Call/Transaction Does Not Exist")
        if not subscription.dialog.accept_remote_seq(request):
            return SubscribeOutcome("refused", 500, "Server Internal Error")
        if asked == 0:
            self._subscriptions.remove(subscription)
            subscription.expires_at = now
            return SubscribeOutcome("ended", 200, expires=0, subscription=subscription)
        expires = self._grant(asked)
        subscription.expires_at = now + expires
        return SubscribeOutcome("refreshed", 200, expires=expires, subscription=subscription)

    def _warning(self, text: str) -> str:
        return warning_value(399, self.agent, text)

    def remove(self, subscription: Subscription) -> None:
        """Forget a subscription (its NOTIFY was refused with 481, its upstream went away)."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def drop_upstream(self, upstream_id: str) -> list[Subscription]:
        """Remove and return an upstream's subscriptions (it unregistered, or left the config).

        The caller may NOTIFY each with `terminated="noresource"`.
        """
        dropped = self.of(upstream_id)
        self._subscriptions = [s for s in self._subscriptions if s.upstream_id != upstream_id]
        return dropped

    def expire(self, now: float) -> list[Subscription]:
        """Remove and return the subscriptions whose expiry has come."""
        expired = [s for s in self._subscriptions if s.expires_at <= now]
        if expired:
            self._subscriptions = [s for s in self._subscriptions if s.expires_at > now]
        return expired

    def next_deadline(self) -> float | None:
        """When the next subscription expires, None with none."""
        return min((s.expires_at for s in self._subscriptions), default=None)
