"""MANSCDP XML bodies of MESSAGE/SUBSCRIBE/NOTIFY (GB/T 28181-2016/2022 section 6.10, 9, App. A).

Parsing is liberal the way devices need it to be, and strict where it matters for safety:

- Charset by content, not by declaration: valid UTF-8 is UTF-8, anything else is GB18030 (a
  superset of GB2312/GBK; Python's `gb2312` codec rejects bytes real devices send). Devices
  declare one encoding and send another, so the declaration is only a tie-breaker (see
  `decode_body`). The XML declaration is removed before the text reaches expat, which refuses
  GB2312 declarations outright.
- No DTDs and no entity declarations: a body containing `<!DOCTYPE` or `<!ENTITY` is refused
  before parsing, which rules out entity expansion and external entities.
- Bodies are capped at 64 KiB, the SIP message cap.
- Quirks tolerated: BOM, leading whitespace, trailing NULs, a raw `&` or `<` in text (Hikvision
  `<Address>`), element names and CmdType values in any case, values padded with spaces.

Every failure raises `ManscdpError` (a `ParseError`, so the adapter answers 400, or 415 for an
unknown root element, or 513 for an oversized body); anything else escaping `parse_manscdp` is a
bug. Building goes the other way: `build_manscdp` and the helpers below produce bodies the way
the devices in the field expect them (declaration first, one element per line, CRLF).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from .errors import LocalProtocolError, ParseError

__all__ = [
    "MAX_BODY_SIZE",
    "ManscdpError",
    "ManscdpMessage",
    "XmlValue",
    "decode_body",
    "parse_manscdp",
    "parse_manscdp_xml",
    "build_manscdp",
    "keepalive",
    "catalog_query",
    "device_info_query",
    "device_status_query",
    "record_info_query",
    "response_parts",
    "catalog_response_parts",
    "format_gb_time",
    "parse_gb_time",
]

MAX_BODY_SIZE = 64 * 1024

# A value of an element to build: text, a number, or a mapping of nested elements.
XmlValue = str | int | float | Mapping[str, "XmlValue"]


class ManscdpError(ParseError):
    """A MANSCDP body that cannot be accepted (status_hint 400 unless stated otherwise)."""


_ROOTS = {name.lower(): name for name in ("Query", "Response", "Notify", "Control")}

_CMD_TYPES = {
    name.lower(): name
    for name in (
        "Keepalive", "Catalog", "DeviceInfo", "DeviceStatus", "RecordInfo", "Alarm",
        "MediaStatus", "DeviceControl", "DeviceConfig", "ConfigDownload", "PresetQuery",
        "MobilePosition", "Broadcast", "HomePositionQuery", "CruiseTrackListQuery",
        "CruiseTrackQuery", "PTZPosition", "SDCardStatus", "UploadSnapShotFinished",
    )
}  # fmt: skip

# Element names of the 2016/2022 schemas, in their standard spelling. Other names keep the
# spelling they were sent with.
_ELEMENTS = {
    name.lower(): name
    for name in (
        "CmdType", "SN", "DeviceID", "Status", "Info", "SumNum", "DeviceList", "Item", "Name",
        "Manufacturer", "Model", "Owner", "CivilCode", "Block", "Address", "Parental",
        "ParentID", "SafetyWay", "RegisterWay", "CertNum", "Certifiable", "ErrCode", "Secrecy",
        "IPAddress", "Port", "Password", "Longitude", "Latitude", "PTZType",
        "PositionType", "RoomType", "UseType", "SupplyLightType", "DirectionType", "Resolution",
        "BusinessGroupID", "DownloadSpeed", "SVCSpaceSupportMode", "SVCTimeSupportMode",
        "SecurityLevelCode", "StreamNumberList", "GrassrootsCode", "PointType", "Event",
        "DeviceName", "Result", "Firmware", "Channel", "Online", "Reason", "Encode", "Record",
        "DeviceTime", "Alarmstatus", "DutyStatus", "StartTime", "EndTime", "FilePath", "Type",
        "RecorderID", "IndistinctQuery", "RecordList", "FileSize", "StreamNumber", "PTZCmd",
        "TeleBoot", "RecordCmd", "GuardCmd", "AlarmCmd", "IFameCmd", "IFrameCmd", "DragZoomIn",
        "DragZoomOut", "HomePosition", "ControlPriority", "AlarmPriority", "AlarmMethod",
        "AlarmTime", "AlarmDescription", "AlarmType", "AlarmTypeParam", "EventType",
        "StartAlarmPriority", "EndAlarmPriority", "StartAlarmTime", "EndAlarmTime",
        "NotifyType", "Time", "Speed", "Direction", "Altitude", "Interval", "ConfigType",
        "BasicParam", "Expiration", "HeartBeatInterval", "HeartBeatCount", "PresetList",
        "PresetID", "PresetName", "SourceID", "TargetID", "SessionID", "SnapShotList",
    )
}  # fmt: skip

_RESERVED = frozenset({"CmdType", "SN", "DeviceID"})

_HOSTILE = re.compile(r"<!\s*(?:doctype|entity)", re.IGNORECASE)
_DECLARATION = re.compile(r"<\?xml(?=[\s?])[^>]*\?>")
_DECLARED_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?\sencoding\s*=\s*["']([A-Za-z0-9._-]{1,40})""")
_BOM = "\ufeff"
_LONE_AMP = re.compile(r"&(?!(?:amp|lt|gt|quot|apos|#[0-9]{1,7}|#x[0-9A-Fa-f]{1,6});)")
_LEAF_WITH_LT = re.compile(r"<([A-Za-z_][\w.-]*)>([^<>]*<[^>]*?)</\1\s*>")
_UINT = re.compile(r"[0-9]{1,20}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TWO_BYTE_UTF8 = re.compile("[\x80-\u07ff]")
_CJK = re.compile("[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")


# -- decoding -----------------------------------------------------------------------------------


def _looks_like_gb_mojibake(utf8_text: str, data: bytes) -> bool:
    """Whether bytes that happen to be valid UTF-8 are more plausibly GB18030.

    Short GBK names (one or two hanzi) are valid UTF-8 surprisingly often: "预" is D4 A4, which
    UTF-8 reads as U+0524. If the UTF-8 reading has no CJK at all but characters from the
    two-byte range (Latin-1 supplement to N'Ko, rare in GB/T 28181 text), and GB18030 reads the
    same bytes without error, GB18030 wins.
    """
    if not _TWO_BYTE_UTF8.search(utf8_text) or _CJK.search(utf8_text):
        return False
    try:
        data.decode("gb18030")
    except UnicodeDecodeError:
        return False
    return True


def decode_body(data: bytes) -> tuple[str, str, str | None]:
    """Decode a body by content: `(text, "UTF-8" | "GB18030", declared encoding or None)`.

    Valid UTF-8 is UTF-8 (ASCII included); otherwise GB18030. The declaration only matters for
    bytes that are valid in both: unless it says UTF-8, `_looks_like_gb_mojibake` may pick
    GB18030. Raises `ManscdpError` if neither decoding works.
    """
    m = _DECLARED_ENCODING.match(data.removeprefix(b"\xef\xbb\xbf"))
    declared = m.group(1).decode("ascii") if m else None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        ascii_only = data.isascii()
        declared_utf8 = declared is not None and declared.upper().replace("_", "-") in (
            "UTF-8",
            "UTF8",
        )
        if ascii_only or declared_utf8 or not _looks_like_gb_mojibake(text, data):
            return text, "UTF-8", declared
    try:
        return data.decode("gb18030"), "GB18030", declared
    except UnicodeDecodeError:
        raise ManscdpError("body is neither UTF-8 nor GB18030") from None


# -- parsing ------------------------------------------------------------------------------------


@dataclass
class ManscdpMessage:
    """One MANSCDP body.

    `fields` holds the other top-level elements by canonical name: leaves directly, and the
    leaves of nested containers (`Info`, `BasicParam`, ...) flattened in, never overwriting a
    name seen before and never using CmdType/SN/DeviceID. `items` holds the `<Item>` children of
    the first list element (an element with `Item` children or a `Num` attribute: DeviceList,
    RecordList, PresetList, Alarmstatus, ...), each flattened the same way. `element` is the
    parsed tree with canonical element names, for the rare structure the flat view loses.
    A body without DeviceID (wvp's Broadcast notify uses SourceID/TargetID) has `device_id` "".
    """

    root: str
    cmd_type: str
    sn: int
    device_id: str
    fields: dict[str, str] = field(default_factory=dict)
    items: list[dict[str, str]] = field(default_factory=list)
    list_num: int | None = None
    encoding: str = "UTF-8"
    declared_encoding: str | None = None
    list_name: str | None = None
    element: ET.Element | None = field(default=None, compare=False, repr=False)

    def get(self, name: str, default: str | None = None) -> str | None:
        """Field value by element name, case-insensitively (CmdType, SN, DeviceID included)."""
        key = _canonical(name)
        if key in self.fields:
            return self.fields[key]
        if key == "CmdType":
            return self.cmd_type
        if key == "SN":
            return str(self.sn)
        if key == "DeviceID":
            return self.device_id
        lowered = name.lower()
        for k, v in self.fields.items():
            if k.lower() == lowered:
                return v
        return default

    @property
    def sum_num(self) -> int | None:
        """SumNum as an integer, or None if absent or not a number."""
        return _uint(self.fields.get("SumNum"))


def _canonical(tag: str) -> str:
    if "}" in tag:
        tag = tag.rpartition("}")[2]
    return _ELEMENTS.get(tag.lower(), tag)


def _uint(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if _UINT.fullmatch(text) else None


def _text(el: ET.Element) -> str:
    return (el.text or "").strip()


def _flatten_into(out: dict[str, str], container: ET.Element, skip: frozenset[str]) -> None:
    """Add the leaves below `container` to `out`: direct children first, then deeper ones."""
    for child in container:
        if len(child) == 0 and child.tag not in out and child.tag not in skip:
            out[child.tag] = _text(child)
    for child in container:
        if len(child):
            for el in child.iter():
                if len(el) == 0 and el.tag not in out and el.tag not in skip:
                    out[el.tag] = _text(el)


def _num_attribute(el: ET.Element) -> str | None:
    """The raw `Num` attribute (any case) of a list element, or None."""
    for k, v in el.attrib.items():
        if k.lower() == "num":
            return v
    return None


def _is_list(el: ET.Element) -> bool:
    return _num_attribute(el) is not None or el.find("Item") is not None


def _xml_candidates(text: str) -> Iterator[str]:
    """The body as sent, then with the repairs for what devices get wrong."""
    yield text
    fixed = _LONE_AMP.sub("&amp;", text)
    if fixed != text:
        yield fixed
    lt_fixed = _LEAF_WITH_LT.sub(
        lambda m: f"<{m.group(1)}>{m.group(2).replace('<', '&lt;')}</{m.group(1)}>", fixed
    )
    if lt_fixed != fixed:
        yield lt_fixed


def _parse_xml(text: str) -> ET.Element:
    error = "empty body"
    for candidate in _xml_candidates(text):
        try:
            return ET.fromstring(candidate)
        except ET.ParseError as exc:
            error = str(exc)
    raise ManscdpError(f"malformed XML: {error}")


def _body_text(data: bytes) -> tuple[str, str, str | None]:
    """Decode, refuse DTDs, strip BOM/whitespace/NULs and the XML declaration."""
    if len(data) > MAX_BODY_SIZE:
        raise ManscdpError("MANSCDP body exceeds 64 KiB", status_hint=513)
    text, encoding, declared = decode_body(data)
    if _HOSTILE.search(text):
        raise ManscdpError("DTD/entities not allowed")
    text = text.lstrip(_BOM + " \t\r\n").rstrip("\x00 \t\r\n")
    m = _DECLARATION.match(text)
    if m is not None:
        text = text[m.end() :].lstrip(" \t\r\n")
    if not text:
        raise ManscdpError("empty MANSCDP body")
    return text, encoding, declared


# The body nearly every device sends once a minute, in its plain form: ASCII, no DTD, nothing
# but CmdType, SN, DeviceID, Status and an empty Info. Matching it directly costs a tenth of the
# XML path; anything else (other spacing inside values, more elements, non-ASCII) takes that path.
_PLAIN_KEEPALIVE = re.compile(
    rb"""\s*(?:<\?xml\s+version\s*=\s*["']1\.0["']"""
    rb"""(?:\s+encoding\s*=\s*["']([A-Za-z0-9._-]{1,40})["'])?\s*\?>)?\s*"""
    rb"<Notify>\s*<CmdType>Keepalive</CmdType>\s*<SN>(\d{1,9})</SN>\s*"
    rb"<DeviceID>(\d{1,20})</DeviceID>\s*<Status>(OK|ERROR)</Status>\s*"
    rb"(<Info>\s*</Info>\s*|<Info\s*/>\s*)?</Notify>\s*"
)


def parse_manscdp(data: bytes) -> ManscdpMessage:
    """Parse one MANSCDP body; raise `ManscdpError` for anything unacceptable.

    A plain keepalive is matched without the XML parser; its `element` is then None.
    """
    if len(data) < 1024:
        m = _PLAIN_KEEPALIVE.fullmatch(data)
        if m is not None:
            declared = m.group(1)
            fields = {"Status": m.group(4).decode("ascii")}
            if m.group(5) is not None:
                fields["Info"] = ""  # an empty element is a leaf, as on the XML path
            return ManscdpMessage(
                "Notify",
                "Keepalive",
                int(m.group(2)),
                m.group(3).decode("ascii"),
                fields=fields,
                encoding="UTF-8",
                declared_encoding=declared.decode("ascii") if declared else None,
            )
    return parse_manscdp_xml(data)


def parse_manscdp_xml(data: bytes) -> ManscdpMessage:
    """`parse_manscdp` without the keepalive shortcut: always through the XML parser."""
    text, encoding, declared = _body_text(bytes(data))
    root = _parse_xml(text)
    for el in root.iter():
        el.tag = _canonical(el.tag)
    root_name = _ROOTS.get(root.tag.lower())
    if root_name is None:
        raise ManscdpError(f"unknown MANSCDP root element {root.tag[:40]!r}", status_hint=415)
    msg = ManscdpMessage(root_name, "", -1, "", encoding=encoding, declared_encoding=declared,
                         element=root)  # fmt: skip
    list_el: ET.Element | None = None
    containers: list[ET.Element] = []
    for child in root:
        tag = child.tag
        if tag == "CmdType" and not msg.cmd_type:
            value = _text(child)
            msg.cmd_type = _CMD_TYPES.get(value.lower(), value)
        elif tag == "SN" and msg.sn < 0:
            sn = _uint(child.text)
            if sn is None:
                raise ManscdpError("SN is not a non-negative integer")
            msg.sn = sn
        elif tag == "DeviceID" and not msg.device_id:
            msg.device_id = _text(child)
        elif len(child) == 0 and _num_attribute(child) is None:
            if tag not in msg.fields and tag not in _RESERVED:
                msg.fields[tag] = _text(child)
        elif list_el is None and _is_list(child):
            list_el = child
        else:
            containers.append(child)
    if not msg.cmd_type:
        raise ManscdpError("missing CmdType")
    if msg.sn < 0:
        raise ManscdpError("missing SN")
    for container in containers:
        _flatten_into(msg.fields, container, _RESERVED)
    if list_el is not None:
        msg.list_name = list_el.tag
        msg.list_num = _uint(_num_attribute(list_el))
        for item_el in list_el.iterfind("Item"):
            item: dict[str, str] = {}
            _flatten_into(item, item_el, frozenset())
            msg.items.append(item)
    return msg


# -- building -----------------------------------------------------------------------------------


def _codec(label: str) -> str:
    norm = label.upper().replace("_", "-")
    if norm.startswith("GB"):
        return "gb18030"
    if norm in ("UTF-8", "UTF8"):
        return "utf-8"
    raise LocalProtocolError(f"unsupported MANSCDP encoding {label!r}")


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise LocalProtocolError(f"invalid XML element name {name!r}")
    return name


def _escape(value: str | int | float) -> str:
    text = value if isinstance(value, str) else str(value)
    if _XML_ILLEGAL.search(text):
        raise LocalProtocolError("text contains characters not allowed in XML")
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def _render(lines: list[str], name: str, value: XmlValue) -> None:
    name = _check_name(name)
    if isinstance(value, Mapping):
        lines.append(f"<{name}>")
        for sub_name, sub_value in value.items():
            _render(lines, sub_name, sub_value)
        lines.append(f"</{name}>")
    else:
        lines.append(f"<{name}>{_escape(value)}</{name}>")


def _render_item(item: Mapping[str, XmlValue]) -> str:
    lines = ["<Item>"]
    for name, value in item.items():
        _render(lines, name, value)
    lines.append("</Item>")
    return "\r\n".join(lines) + "\r\n"


def _head(
    root: str, cmd_type: str, sn: int, device_id: str, fields: Iterable[tuple[str, XmlValue]],
    encoding: str,
) -> str:  # fmt: skip
    if sn < 0:
        raise LocalProtocolError("SN must be non-negative")
    lines = [f'<?xml version="1.0" encoding="{_escape(encoding)}"?>', f"<{_check_name(root)}>"]
    _render(lines, "CmdType", cmd_type)
    _render(lines, "SN", int(sn))
    _render(lines, "DeviceID", device_id)
    for name, value in fields:
        _render(lines, name, value)
    return "\r\n".join(lines) + "\r\n"


def build_manscdp(
    root: str,
    cmd_type: str,
    sn: int,
    device_id: str,
    fields: Iterable[tuple[str, XmlValue]] = (),
    *,
    items: Sequence[Mapping[str, XmlValue]] | None = None,
    list_name: str = "DeviceList",
    encoding: str = "GB2312",
) -> bytes:
    """Serialise a MANSCDP body.

    The declaration carries `encoding` as given; the bytes are GB18030 for any GB* label (a
    superset that also encodes characters GB2312 lacks) and UTF-8 for UTF-8. Field values may
    be str, int, float (formatted with `str`; format coordinates yourself for a fixed number of
    decimals) or a mapping of nested elements. With `items`, a `<list_name Num="n">` of `<Item>`
    elements follows the fields. Raises `LocalProtocolError` for invalid element names,
    characters not allowed in XML, or an unknown encoding label.
    """
    codec = _codec(encoding)
    text = _head(root, cmd_type, sn, device_id, fields, encoding)
    if items is not None:
        name = _check_name(list_name)
        body = "".join(_render_item(item) for item in items)
        text += f'<{name} Num="{len(items)}">\r\n{body}</{name}>\r\n'
    return (text + f"</{root}>\r\n").encode(codec)


def keepalive(sn: int, device_id: str, status: str = "OK", *, encoding: str = "GB2312") -> bytes:
    """Notify/Keepalive sent by a device (or by us to an upper platform) every interval."""
    return build_manscdp("Notify", "Keepalive", sn, device_id, [("Status", status)],
                         encoding=encoding)  # fmt: skip


def catalog_query(sn: int, device_id: str, *, encoding: str = "GB2312") -> bytes:
    """Query/Catalog for a registered device (or, cascaded, for ourselves)."""
    return build_manscdp("Query", "Catalog", sn, device_id, encoding=encoding)


def device_info_query(sn: int, device_id: str, *, encoding: str = "GB2312") -> bytes:
    """Query/DeviceInfo: manufacturer, model, firmware, channel count."""
    return build_manscdp("Query", "DeviceInfo", sn, device_id, encoding=encoding)


def device_status_query(sn: int, device_id: str, *, encoding: str = "GB2312") -> bytes:
    """Query/DeviceStatus: online, encode/record state, alarm duty status."""
    return build_manscdp("Query", "DeviceStatus", sn, device_id, encoding=encoding)


def record_info_query(
    sn: int,
    device_id: str,
    start: datetime,
    end: datetime,
    *,
    record_type: str = "all",
    tz: tzinfo | None = None,
    encoding: str = "GB2312",
) -> bytes:
    """Query/RecordInfo for a channel between two times (zoneless wire time, see
    `format_gb_time`). Always sends `<Type>`, which Dahua NVRs require."""
    fields: list[tuple[str, XmlValue]] = [
        ("StartTime", format_gb_time(start, tz=tz)),
        ("EndTime", format_gb_time(end, tz=tz)),
        ("Secrecy", 0),
        ("Type", record_type),
    ]
    return build_manscdp("Query", "RecordInfo", sn, device_id, fields, encoding=encoding)


def response_parts(
    cmd_type: str,
    sn: int,
    device_id: str,
    items: Sequence[Mapping[str, XmlValue]],
    sum_num: int | None = None,
    *,
    list_name: str = "DeviceList",
    fields: Iterable[tuple[str, XmlValue]] = (),
    per_message: int = 1,
    max_bytes: int | None = None,
    encoding: str = "GB2312",
    root: str = "Response",
) -> list[bytes]:
    """Split a multi-part Response (Catalog, RecordInfo, ...) into MESSAGE bodies.

    Every part repeats the SN, `fields` (e.g. RecordInfo's Name) and `SumNum` = `sum_num`
    (default: the number of items); its list's `Num` is the part's own count. A part holds at
    most `per_message` items and, when `max_bytes` is given, no more than fit in that many
    bytes (a single larger item still goes alone). No items: one body with SumNum 0 and no
    list (2016 App. N). `root` "Notify" splits a Catalog NOTIFY the same way.
    """
    if per_message < 1:
        raise LocalProtocolError("per_message must be at least 1")
    codec = _codec(encoding)
    total = len(items) if sum_num is None else sum_num
    fields = [*fields, ("SumNum", total)]
    head = _head(root, cmd_type, sn, device_id, fields, encoding)
    tail = f"</{root}>\r\n"
    if not items:
        return [(head + tail).encode(codec)]
    name = _check_name(list_name)
    rendered = [_render_item(item).encode(codec) for item in items]
    fixed = len((head + tail).encode(codec)) + len(f'<{name} Num="{per_message}">\r\n</{name}>\r\n')
    parts: list[bytes] = []
    start = 0
    while start < len(rendered):
        stop = start + 1
        size = fixed + len(rendered[start])
        while stop < len(rendered) and stop - start < per_message:
            if max_bytes is not None and size + len(rendered[stop]) > max_bytes:
                break
            size += len(rendered[stop])
            stop += 1
        list_open = f'<{name} Num="{stop - start}">\r\n'.encode(codec)
        parts.append(
            head.encode(codec) + list_open + b"".join(rendered[start:stop])
            + f"</{name}>\r\n".encode(codec) + tail.encode(codec)
        )  # fmt: skip
        start = stop
    return parts


def catalog_response_parts(
    sn: int,
    device_id: str,
    items: Sequence[Mapping[str, XmlValue]],
    sum_num: int | None = None,
    *,
    per_message: int = 1,
    max_bytes: int | None = None,
    encoding: str = "GB2312",
) -> list[bytes]:
    """Response/Catalog bodies for `items`, split as `response_parts` describes.

    Over UDP keep parts well under the MTU (wvp sends 1 item per part by default); over TCP
    larger parts are fine.
    """
    return response_parts("Catalog", sn, device_id, items, sum_num, per_message=per_message,
                          max_bytes=max_bytes, encoding=encoding)  # fmt: skip


# -- times --------------------------------------------------------------------------------------

_GB_TIME = re.compile(
    r"\s*(\d{4})-(\d{1,2})-(\d{1,2})(?:[Tt]|\s+)(\d{1,2}):(\d{1,2})"
    r"(?::(\d{1,2})(?:[.,](\d{1,9}))?)?\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?\s*"
)


def format_gb_time(dt: datetime, *, millis: bool = False, tz: tzinfo | None = None) -> str:
    """`2026-11-23T10:00:00` (or `...:00.000` with `millis`, as in the REGISTER 200's Date).

    GB/T 28181 wire times carry no zone: the wall-clock fields of `dt` are written as they are.
    With `tz`, an aware `dt` is first converted to that zone (e.g. Asia/Shanghai).
    """
    if tz is not None and dt.tzinfo is not None:
        dt = dt.astimezone(tz)
    # Fields by hand rather than strftime, which costs several times as much (every REGISTER
    # 200 carries one).
    text = (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}")
    if millis:
        text += f".{dt.microsecond // 1000:03d}"
    return text


def parse_gb_time(text: str, tz: tzinfo) -> datetime:
    """Parse a wire time into an aware datetime in `tz`.

    Zoneless times (the norm) are local times of `tz`. Accepts unpadded fields
    (`2024-5-20T9:3:0`), missing seconds, fractions of any length, a space instead of `T`, and a
    trailing `Z` or `+08:00` offset (converted to `tz`). Raises `ManscdpError` otherwise.
    """
    m = _GB_TIME.fullmatch(text)
    if m is None:
        raise ManscdpError(f"invalid time {text[:40]!r}")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    try:
        naive = datetime(int(year), int(month), int(day), int(hour), int(minute),
                         int(second or 0), micro)  # fmt: skip
    except ValueError:
        raise ManscdpError(f"invalid time {text[:40]!r}") from None
    if not zone:
        return naive.replace(tzinfo=tz)
    if zone in "Zz":
        offset = UTC
    else:
        digits = zone[1:].replace(":", "")
        delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        if delta >= timedelta(hours=24):
            raise ManscdpError(f"invalid time zone in {text[:40]!r}")
        offset = timezone(-delta if zone[0] == "-" else delta)
    return naive.replace(tzinfo=offset).astimezone(tz)
