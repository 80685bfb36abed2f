"""The node's catalog toward an upper platform (GB/T 28181-2016 section 9.3, 9.5, 9.11; App. N/P).

No I/O here: the cascade feeds these functions the node's channels, the share policy and an
upstream's ID, and sends what they return.

- Share classes (district sharing): a channel is `unconditional` (every upstream sees it),
  `authorized` (only the upstreams listed for it) or `none` (never leaves the node). The policy
  has a default class and per-channel overrides; `SharePolicy.visible_to` decides one pair and
  `shared_channels` filters a whole catalog.
- Answers: Response/Catalog split into parts with one SN and SumNum, Response/DeviceInfo and
  Response/DeviceStatus of the node as a platform.
- Changes: `catalog_changes` turns two snapshots of the channels into the Catalog NOTIFY events
  an upstream must get, `catalog_notify_parts` serialises them.
- Requests: `platform_query` and `catalog_subscription` recognise what an upstream asks of us.

Channels are given as a mapping of channel ID to catalog fields (`Name`, `Status`, `Info`, ...);
IDs go upward unchanged (one device, one archive), and a `DeviceID` among the fields is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from types import MappingProxyType
from typing import Final, Protocol

from .errors import LocalProtocolError
from .manscdp import ManscdpMessage, XmlValue, build_manscdp, format_gb_time, response_parts

__all__ = [
    "UNCONDITIONAL",
    "AUTHORIZED",
    "NONE",
    "SHARE_CLASSES",
    "ON",
    "OFF",
    "ADD",
    "DEL",
    "UPDATE",
    "ChannelShare",
    "SharePolicy",
    "Visibility",
    "shared_channels",
    "catalog_response_parts",
    "device_info_response",
    "device_status_response",
    "CatalogEvent",
    "catalog_changes",
    "apply_catalog_events",
    "catalog_notify_parts",
    "PlatformQuery",
    "platform_query",
    "CatalogSubscription",
    "catalog_subscription",
    "is_catalog_event",
]

UNCONDITIONAL: Final = "unconditional"
AUTHORIZED: Final = "authorized"
NONE: Final = "none"
SHARE_CLASSES: Final = frozenset({UNCONDITIONAL, AUTHORIZED, NONE})

# Catalog NOTIFY events (2016 A.2.5; VLOST and DEFECT are the device's to report, not ours).
ON: Final = "ON"
OFF: Final = "OFF"
ADD: Final = "ADD"
DEL: Final = "DEL"
UPDATE: Final = "UPDATE"

Fields = Mapping[str, XmlValue]


# -- share classes ------------------------------------------------------------------------------


def _check_class(share: str) -> str:
    if share not in SHARE_CLASSES:
        raise LocalProtocolError(f"unknown share class {share!r}")
    return share


@dataclass(frozen=True)
class ChannelShare:
    """A channel's own share class; `upstreams` only matters for `authorized`."""

    share: str
    upstreams: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        _check_class(self.share)
        object.__setattr__(self, "upstreams", frozenset(self.upstreams))


@dataclass(frozen=True)
class SharePolicy:
    """Which upstream sees which channel.

    `default` applies to every channel without an override. A default of `authorized` shares
    nothing by itself: there is no list of upstreams for it, so only overrides open channels.
    """

    default: str = UNCONDITIONAL
    overrides: Mapping[str, ChannelShare] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_class(self.default)
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def share_of(self, channel_id: str) -> ChannelShare:
        """The class that applies to a channel (its override, else the default)."""
        return self.overrides.get(channel_id) or ChannelShare(self.default)

    def visible_to(self, upstream_id: str, channel_id: str) -> bool:
        """Whether the upstream may see (list, be notified of, play) the channel."""
        share = self.share_of(channel_id)
        if share.share == UNCONDITIONAL:
            return True
        if share.share == AUTHORIZED:
            return upstream_id in share.upstreams
        return False


class Visibility(Protocol):
    """Anything that says which upstream sees which channel (`SharePolicy`, or the node's
    policy with its grants)."""

    def visible_to(self, upstream_id: str, channel_id: str) -> bool: ...


def shared_channels(
    channels: Mapping[str, Fields], policy: Visibility, upstream_id: str
) -> dict[str, Fields]:
    """The channels `upstream_id` may see, in the order given, fields unchanged."""
    return {cid: f for cid, f in channels.items() if policy.visible_to(upstream_id, cid)}


# -- answers ------------------------------------------------------------------------------------


def _item(channel_id: str, fields: Fields, event: str | None = None) -> dict[str, XmlValue]:
    item: dict[str, XmlValue] = {"DeviceID": channel_id}
    if event is not None:
        item["Event"] = event
    for name, value in fields.items():
        if name not in ("DeviceID", "Event"):
            item[name] = value
    return item


def catalog_response_parts(
    sn: int,
    device_id: str,
    items: Mapping[str, Fields],
    *,
    per_part: int = 1,
    max_bytes: int | None = None,
    encoding: str = "GB2312",
) -> list[bytes]:
    """Response/Catalog bodies answering an upstream's query `sn` for our node `device_id`.

    `items` maps channel ID to catalog fields (e.g. `shared_channels(...)`). Every part carries
    the SN and SumNum = all items; a part holds at most `per_part` items (and at most
    `max_bytes`, see `response_parts`). Keep parts small over UDP: wvp answers one item per
    part by default. With no items, one body: SumNum 0 and an empty `DeviceList Num="0"`, the
    form upper platforms parse without special cases.
    """
    if per_part < 1:
        raise LocalProtocolError("per_part must be at least 1")
    if not items:
        return [build_manscdp("Response", "Catalog", sn, device_id, [("SumNum", 0)], items=[],
                              encoding=encoding)]  # fmt: skip
    rendered = [_item(cid, f) for cid, f in items.items()]
    return response_parts("Catalog", sn, device_id, rendered, per_message=per_part,
                          max_bytes=max_bytes, encoding=encoding)  # fmt: skip


def device_info_response(
    sn: int,
    device_id: str,
    *,
    name: str,
    manufacturer: str,
    model: str,
    firmware: str,
    channels: int,
    encoding: str = "GB2312",
) -> bytes:
    """Response/DeviceInfo of the node as a platform; `channels` is the count the upstream
    may see."""
    fields: list[tuple[str, XmlValue]] = [
        ("DeviceName", name),
        ("Result", "OK"),
        ("Manufacturer", manufacturer),
        ("Model", model),
        ("Firmware", firmware),
        ("Channel", channels),
    ]
    return build_manscdp("Response", "DeviceInfo", sn, device_id, fields, encoding=encoding)


def device_status_response(
    sn: int,
    device_id: str,
    *,
    online: bool = True,
    ok: bool = True,
    reason: str = "",
    encode: bool = True,
    record: bool = False,
    device_time: datetime | None = None,
    tz: tzinfo | None = None,
    alarms: Sequence[tuple[str, str]] = (),
    encoding: str = "GB2312",
) -> bytes:
    """Response/DeviceStatus of the node as a platform.

    `alarms` are (DeviceID, DutyStatus ONDUTY | OFFDUTY | ALARM) pairs for `Alarmstatus`;
    `device_time` is written as wire time (zoneless, converted to `tz` first when given).
    """
    fields: list[tuple[str, XmlValue]] = [
        ("Result", "OK"),
        ("Online", "ONLINE" if online else "OFFLINE"),
        ("Status", "OK" if ok else "ERROR"),
    ]
    if reason:
        fields.append(("Reason", reason))
    fields += [("Encode", "ON" if encode else "OFF"), ("Record", "ON" if record else "OFF")]
    if device_time is not None:
        fields.append(("DeviceTime", format_gb_time(device_time, tz=tz)))
    items = [{"DeviceID": aid, "DutyStatus": duty} for aid, duty in alarms]
    return build_manscdp("Response", "DeviceStatus", sn, device_id, fields, items=items,
                         list_name="Alarmstatus", encoding=encoding)  # fmt: skip


# -- changes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogEvent:
    """One Item of a Catalog NOTIFY: `fields` is empty for DEL, ON and OFF."""

    channel_id: str
    event: str
    fields: Fields = field(default_factory=dict)


def _without_status(fields: Fields) -> dict[str, XmlValue]:
    return {k: v for k, v in fields.items() if k not in ("Status", "DeviceID", "Event")}


def catalog_changes(
    before: Mapping[str, Fields],
    after: Mapping[str, Fields],
    policy: Visibility,
    upstream_id: str,
    *,
    previous_policy: Visibility | None = None,
) -> list[CatalogEvent]:
    """The Catalog NOTIFY events that take `upstream_id` from its view of `before` to `after`.

    Views are `shared_channels` of each snapshot; `before` is seen under `previous_policy`
    when the policy itself changed (a reload), else under `policy`. A channel that becomes
    visible is ADD (full fields), one that becomes invisible (or goes away) is DEL. For a
    channel seen in both: a change of any field but Status is UPDATE with the full fields; a
    change of Status to ON or OFF is that event (after the UPDATE, if there is one, for upper
    platforms that track status from ON/OFF only). A Status that is neither ON nor OFF is only
    carried by an UPDATE. DELs come first, the rest in the order of `after`.
    """
    old = shared_channels(before, previous_policy or policy, upstream_id)
    new = shared_channels(after, policy, upstream_id)
    events = [CatalogEvent(cid, DEL) for cid in old if cid not in new]
    for cid, fields in new.items():
        prev = old.get(cid)
        if prev is None:
            events.append(CatalogEvent(cid, ADD, _without_event(fields)))
            continue
        status, prev_status = fields.get("Status"), prev.get("Status")
        status_event = status in (ON, OFF) and prev_status is not None
        updated = _without_status(prev) != _without_status(fields) or (
            status != prev_status and not status_event
        )
        if updated:
            events.append(CatalogEvent(cid, UPDATE, _without_event(fields)))
        if status != prev_status and status_event:
            events.append(CatalogEvent(cid, str(status)))
    return events


def _without_event(fields: Fields) -> dict[str, XmlValue]:
    return {k: v for k, v in fields.items() if k not in ("DeviceID", "Event")}


def apply_catalog_events(
    view: Mapping[str, Fields], events: Sequence[CatalogEvent]
) -> dict[str, Fields]:
    """An upper platform's catalog after `events`, as the standard asks it to apply them.

    ADD and UPDATE set the channel's fields, DEL removes it, ON and OFF set its Status. Used
    by the simulated upstream and to check `catalog_changes`.
    """
    out = dict(view)
    for ev in events:
        if ev.event in (ADD, UPDATE):
            out[ev.channel_id] = dict(ev.fields)
        elif ev.event == DEL:
            out.pop(ev.channel_id, None)
        elif ev.event in (ON, OFF) and ev.channel_id in out:
            out[ev.channel_id] = {**out[ev.channel_id], "Status": ev.event}
    return out


def catalog_notify_parts(
    sn: int,
    device_id: str,
    events: Sequence[CatalogEvent],
    *,
    per_part: int = 1,
    max_bytes: int | None = None,
    encoding: str = "GB2312",
) -> list[bytes]:
    """Notify/Catalog bodies for `events`, split like `catalog_response_parts` (one SN, SumNum =
    all events, order kept). Items are DeviceID and Event, plus the full fields for ADD and
    UPDATE. No events, no bodies."""
    if per_part < 1:
        raise LocalProtocolError("per_part must be at least 1")
    if not events:
        return []
    items = [
        _item(ev.channel_id, ev.fields if ev.event in (ADD, UPDATE) else {}, ev.event)
        for ev in events
    ]
    return response_parts("Catalog", sn, device_id, items, per_message=per_part,
                          max_bytes=max_bytes, encoding=encoding, root="Notify")  # fmt: skip


# -- what an upstream asks ----------------------------------------------------------------------

_PLATFORM_QUERIES = frozenset({"Catalog", "DeviceInfo", "DeviceStatus"})


@dataclass(frozen=True)
class PlatformQuery:
    """A Catalog, DeviceInfo or DeviceStatus query from an upstream.

    `device_id` is whom it asks: our node ID (answer as a platform) or a channel's.
    `start_time`/`end_time` are a Catalog query's optional window, as sent.
    """

    cmd_type: str
    sn: int
    device_id: str
    encoding: str
    start_time: str | None = None
    end_time: str | None = None


def platform_query(msg: ManscdpMessage) -> PlatformQuery | None:
    """The query the node answers itself, or None for anything else (other CmdTypes, which
    are relayed or refused, and bodies that are not a Query)."""
    if msg.root != "Query" or msg.cmd_type not in _PLATFORM_QUERIES:
        return None
    return PlatformQuery(
        msg.cmd_type,
        msg.sn,
        msg.device_id,
        msg.encoding,
        msg.fields.get("StartTime") if msg.cmd_type == "Catalog" else None,
        msg.fields.get("EndTime") if msg.cmd_type == "Catalog" else None,
    )


@dataclass(frozen=True)
class CatalogSubscription:
    """The body of an upstream's catalog SUBSCRIBE (Query/Catalog)."""

    sn: int
    device_id: str
    encoding: str


def catalog_subscription(msg: ManscdpMessage) -> CatalogSubscription | None:
    """A SUBSCRIBE body asking for catalog changes, or None (alarm, position, anything else)."""
    if msg.root != "Query" or msg.cmd_type != "Catalog":
        return None
    return CatalogSubscription(msg.sn, msg.device_id, msg.encoding)


def is_catalog_event(event_header: str) -> bool:
    """Whether a SUBSCRIBE's Event header names the catalog package.

    2022 App. N sends `Catalog;id=<n>`, wvp `Catalog`; 2016's examples use `presence` for every
    subscription, so `presence` counts when the body is a Catalog query (check that too).
    """
    package = event_header.split(";", 1)[0].strip().lower()
    return package in ("catalog", "presence")
