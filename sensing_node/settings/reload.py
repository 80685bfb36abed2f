"""What a reload of the config file changes, what it cannot change, and the running
configuration as the API shows it.

A running node takes most of a new file at once, but some keys are bound at start: the sockets
(`node.sip_listen`, `node.http_listen`, `node.rtp_ports`, `node.media_ip`, `node.media_bind`),
the storage (`node.data_dir`, `recording.dir`), how the recorder cuts, dates and writes
segments (`recording.segment_s`, `recording.fsync_s`, `recording.direct_io`, `node.timezone`),
the node's identity (`node.id`, `node.realm`), the receivers' `media.connect_timeout_s`, the
media processes and ports (`media.workers`, `media.single_port`) and the built-in cameras
(`simulator`).
`merge` keeps the running values of those, so that no part of the node ever sees half of a
change, and names the keys whose new values wait for a restart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from . import SECTIONS, Settings

__all__ = ["MASK", "RESTART_KEYS", "Merged", "masked", "merge"]

#: per section, the fields bound at start and the key each is written as in the file
RESTART_KEYS: dict[str, dict[str, str]] = {
    "node": {
        "id": "node.id", "realm": "node.realm",
        "sip_host": "node.sip_listen", "sip_port": "node.sip_listen",
        "http_host": "node.http_listen", "http_port": "node.http_listen",
        "media_ip": "node.media_ip", "media_bind": "node.media_bind",
        "rtp_port_min": "node.rtp_ports", "rtp_port_max": "node.rtp_ports",
        "data_dir": "node.data_dir", "timezone_name": "node.timezone",
    },
    "recording": {"dir": "recording.dir", "segment_s": "recording.segment_s",
                  "fsync_s": "recording.fsync_s", "direct_io": "recording.direct_io"},
    "media": {"connect_timeout_s": "media.connect_timeout_s", "workers": "media.workers",
              "single_port": "media.single_port"},
    "simulator": {"cameras": "simulator.cameras",
                  "channels_per_camera": "simulator.channels_per_camera"},
}

#: what a secret is shown as
MASK = "***"
#: the fields that hold a secret, wherever they are (a TURN server's `credential` too)
_SECRETS = frozenset({"password", "api_token", "token_sha256", "credential"})


@dataclass(frozen=True)
class Merged:
    """The settings to run with from now on, the sections that differ from the running ones
    (in file order), and the keys whose new values need a restart (kept as they run)."""

    settings: Settings
    applied: list[str]
    restart_needed: list[str]


def merge(running: Settings, new: Settings) -> Merged:
    """`new` with the running values of the keys bound at start (`RESTART_KEYS`)."""
    restart: list[str] = []
    kept: dict[str, Any] = {}
    for section, keys in RESTART_KEYS.items():
        old_part, new_part = getattr(running, section), getattr(new, section)
        for name, key in keys.items():
            if getattr(old_part, name) != getattr(new_part, name) and key not in restart:
                restart.append(key)
        kept[section] = dataclasses.replace(
            new_part, **{name: getattr(old_part, name) for name in keys}
        )
    merged = dataclasses.replace(new, **kept)
    applied = [section.name for section in SECTIONS
               if getattr(merged, section.name) != getattr(running, section.name)]
    return Merged(merged, applied, restart)


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as JSON values, every password, token, token hash and TURN credential
    shown as `MASK` (an unset one as null). Field names are the dataclasses' (`sip_host`
    and `sip_port` for `sip_listen`, `from` for a device's `from`)."""
    plain = _plain(settings)
    assert isinstance(plain, dict)
    return plain


def _plain(value: Any, name: str = "") -> Any:
    if name in _SECRETS:
        return None if value is None else MASK
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name.rstrip("_"): _plain(getattr(value, f.name), f.name)
                for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list | frozenset | set):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
