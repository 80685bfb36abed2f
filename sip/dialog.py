"""INVITE and SUBSCRIBE dialogs, UAC and UAS sides (RFC 3261 sections 12, 13.2.2.4), sans-I/O.

The node is the UAC when it INVITEs a camera for live video (GB/T 28181 section 9.2). Once the
INVITE client transaction passes up a 2xx, `Dialog.from_2xx` records the dialog state, `ack`
builds the ACK for that 2xx (sent by the TU, outside any transaction, once per 2xx received),
`request` builds in-dialog requests such as BYE and INFO, and `match` tells whether a message
(a BYE from the device, a response to our BYE) belongs to the dialog.

Toward an upper platform the node is the UAS: the upstream INVITEs a channel or SUBSCRIBEs to
the catalog, and `Dialog.from_request` records the dialog our 2xx creates (RFC 3261 12.1.1), so
that `request` builds the BYE for a session whose camera went away, or a NOTIFY (RFC 6665), and
`accept_remote_seq` checks the CSeq order of the upstream's in-dialog requests (12.2.2).

Branches are not invented here: the endpoint owns them, so each builder takes the Via text.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LocalProtocolError, ParseError
from .headers import Headers
from .message import Request, Response
from .uri import NameAddr, Uri

__all__ = ["Dialog"]


def _without_tag(value: NameAddr) -> str:
    params = {k: v for k, v in value.params.items() if k != "tag"}
    return str(NameAddr(uri=value.uri, display=value.display, params=params))


@dataclass
class Dialog:
    """Dialog state of RFC 3261 12.1.2, kept by the UAC.

    `local_uri` and `remote_uri` are the From and To values (name-addr text) without their tags,
    which live in `local_tag` and `remote_tag`. `route_set` holds Route values in the order they
    go into requests. `local_seq` is the CSeq number of the last request sent in the dialog and
    `invite_seq` that of the INVITE, which its ACK repeats. `remote_seq` is the CSeq number of
    the peer's last request in the dialog, None until it sent one (always None for the UAC
    dialogs of `from_2xx`, where the device has not yet spoken in the dialog). `uas` is True for
    the dialogs of `from_request`, which have no ACK of ours.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: tuple[str, ...] = ()
    local_seq: int = 0
    invite_seq: int = 0
    remote_seq: int | None = None
    uas: bool = False

    @classmethod
    def from_2xx(cls, invite: Request, response: Response) -> Dialog:
        """The dialog a 2xx to our `invite` creates.

        Raises LocalProtocolError if `invite` is not an INVITE with a From tag or `response` is
        not a 2xx, and ParseError if the response does not belong to the INVITE (Call-ID, CSeq,
        From tag) or carries a malformed Contact or Record-Route.
        """
        if invite.method != "INVITE":
            raise LocalProtocolError(f"a dialog needs an INVITE, not {invite.method}")
        if not 200 <= response.status < 300:
            raise LocalProtocolError(f"a dialog needs a 2xx, not {response.status}")
        local_tag = invite.from_.tag
        if not local_tag:
            raise LocalProtocolError("our INVITE has no From tag")
        seq, method = response.cseq
        if response.call_id != invite.call_id:
            raise ParseError("2xx Call-ID does not match the INVITE")
        if (seq, method) != (invite.cseq[0], "INVITE"):
            raise ParseError("2xx CSeq does not match the INVITE")
        if response.from_.tag != local_tag:
            raise ParseError("2xx From tag does not match the INVITE")
        # Some devices answer 200 OK without a To tag (one Hikvision IPC in the test corpus
        # does). RFC 3261 12.1.2 then takes the remote tag as empty, for RFC 2543 peers; accept
        # it rather than lose the stream.
        remote_tag = response.to.tag or ""
        contacts = response.contacts
        if contacts:
            if contacts[0].wildcard:
                raise ParseError("2xx Contact may not be *")
            remote_target = str(contacts[0].uri)
        else:
            # Contact is mandatory in a 2xx to INVITE, but GB/T 28181 devices sometimes leave it
            # out; the device we sent the INVITE to is then the best target we have.
            remote_target = invite.uri
        route_set = tuple(
            str(NameAddr.parse(value))
            for value in reversed(response.headers.get_all("Record-Route"))
        )
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=_without_tag(invite.from_),
            remote_uri=_without_tag(response.to),
            remote_target=remote_target,
            route_set=route_set,
            local_seq=seq,
            invite_seq=seq,
        )

    @classmethod
    def from_request(cls, request: Request, response: Response, *, first_seq: int = 1) -> Dialog:
        """The dialog our 2xx `response` to a received INVITE or SUBSCRIBE creates (12.1.1).

        The local tag is the To tag of our response, the remote target the request's Contact,
        and the route set its Record-Route values in the order received. `first_seq` is the
        CSeq number of the first request we send in the dialog (a BYE, or the first NOTIFY).
        A request without Contact (RFC 3261 requires one; not every GB platform sends it)
        targets its From URI. Raises LocalProtocolError if `request` is not an INVITE or
        SUBSCRIBE, or `response` is not our 2xx to it with a To tag, and ParseError for a
        malformed Contact or Record-Route, or `Contact: *`.
        """
        if request.method not in ("INVITE", "SUBSCRIBE"):
            raise LocalProtocolError(
                f"a UAS dialog needs an INVITE or SUBSCRIBE, not {request.method}"
            )
        if not 200 <= response.status < 300:
            raise LocalProtocolError(f"a dialog needs a 2xx, not {response.status}")
        if not 0 < first_seq < 2**31:
            raise LocalProtocolError(f"first CSeq must be 1 to 2**31-1: {first_seq}")
        local_tag = response.to.tag
        if not local_tag:
            raise LocalProtocolError("our 2xx has no To tag")
        seq, method = request.cseq
        if response.call_id != request.call_id or response.cseq != (seq, method):
            raise LocalProtocolError("the 2xx does not answer this request (Call-ID, CSeq)")
        if request.to.tag and request.to.tag != local_tag:
            raise LocalProtocolError("the 2xx To tag differs from the request's")
        contacts = request.contacts
        if contacts:
            if contacts[0].wildcard:
                raise ParseError(f"{request.method} Contact may not be *")
            remote_target = str(contacts[0].uri)
        else:
            remote_target = str(request.from_.uri)
        route_set = tuple(
            str(NameAddr.parse(value)) for value in request.headers.get_all("Record-Route")
        )
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            # RFC 2543 peers may leave out the From tag; 12.1.1 then takes it as empty.
            remote_tag=request.from_.tag or "",
            local_uri=_without_tag(request.to),
            remote_uri=_without_tag(request.from_),
            remote_target=remote_target,
            route_set=route_set,
            local_seq=first_seq - 1,
            remote_seq=seq,
            uas=True,
        )

    def accept_remote_seq(self, request: Request) -> bool:
        """Whether an in-dialog request from the peer is in CSeq order (12.2.2), remembering it.

        A number lower than the last one seen is out of order: the caller answers 500. The
        same number is accepted (a CANCEL, or the ACK repeating its INVITE's number).
        """
        seq = request.cseq[0]
        if self.remote_seq is not None and seq < self.remote_seq:
            return False
        self.remote_seq = seq
        return True

    # ----- building requests -----
    def ack(self, via: str) -> Request:
        """The ACK for the 2xx (13.2.2.4): CSeq number of the INVITE, a new branch in `via`.

        The TU sends one for every 2xx passed up, retransmissions included.
        """
        if self.uas:
            raise LocalProtocolError("the UAS of a dialog sends no ACK")
        return self._build("ACK", self.invite_seq, via)

    def request(
        self, method: str, via: str, body: bytes = b"", content_type: str | None = None
    ) -> Request:
        """A request within the dialog (12.2.1.1), such as BYE or INFO, with the next CSeq."""
        if method in ("ACK", "CANCEL", "INVITE"):
            raise LocalProtocolError(f"{method} is not built by Dialog.request")
        if body and content_type is None:
            raise LocalProtocolError("a body needs a content type")
        self.local_seq += 1
        request = self._build(method, self.local_seq, via)
        if content_type is not None:
            request.headers.add("Content-Type", content_type)
        request.body = body
        return request

    def _build(self, method: str, seq: int, via: str) -> Request:
        uri, routes = self._target_and_routes()
        headers = Headers()
        headers.add("Via", via)
        headers.add("Max-Forwards", "70")
        headers.add("From", f"{self.local_uri};tag={self.local_tag}")
        to = self.remote_uri if not self.remote_tag else f"{self.remote_uri};tag={self.remote_tag}"
        headers.add("To", to)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{seq} {method}")
        for route in routes:
            headers.add("Route", route)
        return Request(headers=headers, method=method, uri=uri)

    def _target_and_routes(self) -> tuple[str, list[str]]:
        """Request-URI and Route values (12.2.1.1), strict routers included."""
        if not self.route_set:
            return self.remote_target, []
        first = NameAddr.parse(self.route_set[0])
        if "lr" in first.uri.params:
            return self.remote_target, list(self.route_set)
        # A strict router (no ;lr) wants its own URI as Request-URI, and the remote target
        # goes to the end of the Route list.
        uri = Uri(
            scheme=first.uri.scheme,
            user=first.uri.user,
            host=first.uri.host,
            port=first.uri.port,
            params=dict(first.uri.params),
            password=first.uri.password,
        )
        return str(uri), [*self.route_set[1:], f"<{self.remote_target}>"]

    # ----- matching -----
    def match(self, message: Request | Response) -> bool:
        """True if `message` belongs to this dialog (12.2.2 and 12.2.1.2): same Call-ID and tags.

        A request from the device carries our tag in To and its tag in From; a response to one
        of our requests carries them the other way round. When the 2xx had no To tag, the
        device's tag is not compared (see `from_2xx`).
        """
        if message.call_id != self.call_id:
            return False
        if isinstance(message, Request):
            ours, theirs = message.to.tag, message.from_.tag
        else:
            ours, theirs = message.from_.tag, message.to.tag
        if ours != self.local_tag:
            return False
        return not self.remote_tag or theirs == self.remote_tag
