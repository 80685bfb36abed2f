"""GB/T 28181 identifiers: 20-digit device/platform codes and civil-code catalog IDs.

Layout of the 20-digit code (GB/T 28181-2016 Appendix D, -2022 Appendix E):

    digits 1-8    center code: province(2) city(2) district(2) grassroots unit(2)
    digits 9-10   industry code
    digits 11-13  type code (111-130 front-end devices, 131-199 peripherals, 200-299 platform
                  components, 300/400 users, 500-599 application platforms, 600-999 extension)
    digit  14     network flag
    digits 15-20  serial number

Catalog items may also carry 2/4/6/8-digit IDs, which are nodes of the administrative division
tree (行政区划, CivilCode). Classification goes by length and type digits, never by the XML
elements an item happens to contain.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Literal

from .errors import ParseError

__all__ = [
    "InvalidId",
    "GbId",
    "CivilCode",
    "parse_gb_id",
    "check_device_id",
    "parse_civil_code",
    "is_civil_code",
    "classify_catalog_id",
    "CatalogKind",
    "type_name",
    "REGISTRABLE_TYPES",
    "VIDEO_TYPES",
]

_DIGITS = frozenset("0123456789")

# Names for the type codes defined by the 2011/2016/2022 texts.
_TYPE_NAMES: dict[int, str] = {
    111: "DVR",
    112: "video server",
    113: "encoder",
    114: "decoder",
    115: "video matrix",
    116: "audio matrix",
    117: "alarm controller",
    118: "NVR",
    120: "online acquisition system",
    121: "video checkpoint",
    122: "multi-lens device",
    123: "car-park gate",
    124: "personnel gate",
    125: "security inspection device",
    130: "HVR",
    131: "camera",
    132: "IPC",
    133: "monitor",
    134: "alarm input",
    135: "alarm output",
    136: "audio input",
    137: "audio output",
    138: "mobile transmission device",
    139: "other peripheral",
    140: "relay alarm output",
    141: "barrier gate",
    142: "smart door",
    143: "credential reader",
    200: "platform",
    201: "web server",
    202: "media server",
    203: "proxy server",
    204: "security server",
    205: "alarm server",
    206: "database server",
    207: "GIS server",
    208: "management server",
    209: "access gateway",
    210: "media storage server",
    211: "signalling security routing gateway",
    215: "business group",
    216: "virtual organization",
    300: "central user",
    400: "terminal user",
    500: "integrated application platform",
    501: "O&M platform",
}

# Types whose ID may name a video source that can be INVITEd: cameras and IPCs, plus devices
# that cheap firmware registers with one ID for device and channel (DVR, video server, encoder,
# NVR, HVR, 2022 checkpoints and multi-lens devices, mobile transmission devices).
VIDEO_TYPES: frozenset[int] = frozenset({111, 112, 113, 118, 121, 122, 130, 131, 132, 138})

# Types that may REGISTER with us by default (see `check_device_id`).
REGISTRABLE_TYPES: frozenset[int] = frozenset(
    set(range(111, 200)) | (set(range(200, 300)) - {215, 216}) | set(range(500, 600))
)


class InvalidId(ParseError):
    """A GB/T 28181 code (20-digit ID or civil code) is malformed."""


def type_name(type_code: int) -> str:
    """A short English name for a type code, falling back to its range's name."""
    name = _TYPE_NAMES.get(type_code)
    if name is not None:
        return name
    if 111 <= type_code <= 130:
        return "front-end device"
    if 131 <= type_code <= 199:
        return "peripheral"
    if 200 <= type_code <= 299:
        return "platform component"
    if 300 <= type_code <= 399:
        return "central user"
    if 400 <= type_code <= 499:
        return "terminal user"
    if 500 <= type_code <= 599:
        return "application platform"
    if type_code >= 600:
        return "extension"
    return "reserved"


@dataclass(frozen=True, slots=True)
class GbId:
    """A parsed 20-digit GB/T 28181 code. `text` is the code itself, the rest are its parts."""

    text: str
    center: str
    industry: str
    type_code: int
    network: int
    serial: str

    def __str__(self) -> str:
        return self.text

    @property
    def domain(self) -> str:
        """The 10-digit SIP domain conventionally derived from the ID (center + industry)."""
        return self.text[:10]

    @property
    def civil_code(self) -> str:
        """The center code with unused trailing `00` levels removed (`34020000` -> `3402`)."""
        code = self.center
        while len(code) > 2 and code.endswith("00"):
            code = code[:-2]
        return code

    @property
    def is_front_end_device(self) -> bool:
        """Types 111-130: DVR, NVR, encoder, decoder, alarm controller, ..."""
        return 111 <= self.type_code <= 130

    @property
    def is_peripheral(self) -> bool:
        """Types 131-199: cameras, IPCs, alarm inputs/outputs, audio inputs/outputs, ..."""
        return 131 <= self.type_code <= 199

    @property
    def is_device(self) -> bool:
        """Front-end device or peripheral (111-199)."""
        return 111 <= self.type_code <= 199

    @property
    def is_platform(self) -> bool:
        """Types 200-299: SIP server, media server, gateways, business groups, virtual orgs."""
        return 200 <= self.type_code <= 299

    @property
    def is_sip_server(self) -> bool:
        """Type 200: the central signalling server of a SIP surveillance domain."""
        return self.type_code == 200

    @property
    def is_business_group(self) -> bool:
        return self.type_code == 215

    @property
    def is_virtual_org(self) -> bool:
        return self.type_code == 216

    @property
    def is_user(self) -> bool:
        """Types 300-499: central and terminal users."""
        return 300 <= self.type_code <= 499

    @property
    def is_video_channel(self) -> bool:
        """Whether the ID can name a video source (see `VIDEO_TYPES`)."""
        return self.type_code in VIDEO_TYPES

    @property
    def is_alarm_input(self) -> bool:
        return self.type_code == 134

    @property
    def is_audio_output(self) -> bool:
        """Type 137: the target of a voice broadcast."""
        return self.type_code == 137

    @property
    def kind(self) -> str:
        """Short English name of the type ("IPC", "NVR", "platform", "business group", ...)."""
        return type_name(self.type_code)


def _id_problem(text: str) -> str | None:
    if len(text) != 20:
        if text and not (set(text) <= _DIGITS):
            return "must contain only digits 0-9"
        return f"must be 20 digits, got {len(text)}"
    if not set(text) <= _DIGITS:
        return "must contain only digits 0-9"
    return None


def parse_gb_id(text: str) -> GbId:
    """Split a 20-digit code into its fields; raise `InvalidId` with a reason if malformed.

    Only ASCII digits count (`str.isdigit` would accept other scripts' digits). Surrounding
    whitespace is not stripped: callers trim wire values first.
    """
    problem = _id_problem(text)
    if problem is not None:
        raise InvalidId(f"invalid GB/T 28181 ID {text[:40]!r}: {problem}")
    return GbId(
        text=text,
        center=text[:8],
        industry=text[8:10],
        type_code=int(text[10:13]),
        network=int(text[13]),
        serial=text[14:],
    )


def check_device_id(text: str, *, allowed_types: Container[int] | None = None) -> str | None:
    """Return None if `text` may REGISTER, else a short human-readable reason.

    Policy (the default `allowed_types` is `REGISTRABLE_TYPES`):

    - 111-199: front-end devices (DVR, NVR, encoder, ...) and peripherals. IPCs register with
      their own 132 code, and some firmware registers a camera (131) or an alarm input.
    - 200-299 except 215/216: lower platforms register to us like devices (cascade), and some
      gateways/media servers do too. Business groups (215) and virtual organizations (216) are
      catalog nodes, never SIP endpoints.
    - 500-599: integrated application and O&M platforms that interconnect as peers.
    - Rejected: 000-110 (undefined), 300-499 (users log in through applications, not SIP
      registration) and 600-999 (vendor extensions; pass `allowed_types` to admit them).
    """
    problem = _id_problem(text)
    if problem is not None:
        return problem
    code = int(text[10:13])
    allowed = REGISTRABLE_TYPES if allowed_types is None else allowed_types
    if code in allowed:
        return None
    if code in (215, 216):
        return f"type code {code} is a {type_name(code)}, not a device"
    if 300 <= code <= 499:
        return f"type code {code} is a user type, not a device type"
    if code < 111:
        return f"type code {code:03d} is not a device type"
    return f"type code {code} is not allowed to register"


# -- civil codes --------------------------------------------------------------------------------

_LEVEL_NAMES = ("province", "city", "district", "grassroots unit")


@dataclass(frozen=True, slots=True)
class CivilCode:
    """A 2/4/6/8-digit administrative division code (catalog node ID or CivilCode value)."""

    text: str

    @property
    def level(self) -> int:
        """1 province, 2 city, 3 district, 4 grassroots unit."""
        return len(self.text) // 2

    @property
    def level_name(self) -> str:
        return _LEVEL_NAMES[self.level - 1]

    @property
    def province(self) -> str:
        return self.text[:2]

    @property
    def city(self) -> str | None:
        return self.text[:4] if self.level >= 2 else None

    @property
    def district(self) -> str | None:
        return self.text[:6] if self.level >= 3 else None

    @property
    def parent(self) -> str | None:
        """The code one level up, or None for a province."""
        return self.text[:-2] if self.level > 1 else None

    def __str__(self) -> str:
        return self.text


def parse_civil_code(text: str) -> CivilCode:
    """Parse a 2/4/6/8-digit civil code; raise `InvalidId` otherwise."""
    if len(text) not in (2, 4, 6, 8):
        raise InvalidId(f"invalid civil code {text[:40]!r}: must be 2, 4, 6 or 8 digits")
    if not set(text) <= _DIGITS:
        raise InvalidId(f"invalid civil code {text[:40]!r}: must contain only digits 0-9")
    return CivilCode(text)


def is_civil_code(text: str) -> bool:
    """Whether `text` is a 2/4/6/8-digit civil code."""
    return len(text) in (2, 4, 6, 8) and set(text) <= _DIGITS


CatalogKind = Literal[
    "civil-code", "device", "platform", "business-group", "virtual-org", "other", "invalid"
]


def classify_catalog_id(text: str) -> CatalogKind:
    """Classify a catalog item's DeviceID by its length and type digits (2016 App. O)."""
    if is_civil_code(text):
        return "civil-code"
    if _id_problem(text) is not None:
        return "invalid"
    code = int(text[10:13])
    if code == 215:
        return "business-group"
    if code == 216:
        return "virtual-org"
    if 200 <= code <= 299:
        return "platform"
    if 111 <= code <= 199:
        return "device"
    return "other"
