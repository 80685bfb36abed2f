"""Node configuration: one YAML file, read into frozen dataclasses.

Operators edit the file by hand, so the loader reports every problem at once, one line each, as
``file:line: key.path: what is wrong``, instead of stopping at the first. Line numbers come from
PyYAML's node API (``yaml.compose``), which keeps the position of every key and value.

The schema is a table. Each section is a tuple of `Key` declarations (name, parser, default, doc)
plus a function that builds the section's dataclass from the parsed values; each section lives in
its own module (`node`, `devices`, `media`, `recording`), the machinery in `schema`. A new section
needs a dataclass, a key table, a builder, one `Section` entry in `SECTIONS` and a field on
`Settings`.

Relative paths (``node.data_dir``) resolve against the directory that holds the config file, so
the node finds the same data whatever directory it is started from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .access import (
    ACTIONS,
    GRANT_KEYS,
    METRICS_KEYS,
    ROLES,
    USER_KEYS,
    GrantSettings,
    MetricsSettings,
    UserSettings,
    build_grants,
    build_metrics,
    build_users,
)
from .cascade import (
    CASCADE_KEYS,
    LIMITS_KEYS,
    UPSTREAM_KEYS,
    CascadeSettings,
    LimitsSettings,
    UpstreamSettings,
    build_cascade,
    build_limits,
    build_upstreams,
    read_list,
)
from .console import CONSOLE_KEYS, ConsoleSettings, IceServer, build_console
from .devices import DEVICES_KEYS, DeviceOverride, DevicesSettings, Rate, _build_devices
from .media import (
    CHANNELS_KEYS,
    MEDIA_KEYS,
    SIMULATOR_KEYS,
    STREAMS,
    TRANSPORTS,
    ChannelOverride,
    ChannelsSettings,
    MediaSettings,
    SimulatorSettings,
    build_media,
    check_single_port,
)
from .node import NODE_KEYS, NodeSettings, _build_node, system_timezone
from .recording import RECORDING_KEYS, RecordingSettings, Schedule, _build_recording
from .schema import (
    ConfigError,
    Key,
    Section,
    _describe,
    _entries,
    _is,
    _read_mapping,
    _Reader,
    _suggest,
)

__all__ = [
    "ACTIONS", "ROLES", "GrantSettings", "MetricsSettings", "UserSettings",
    "STREAMS", "TRANSPORTS", "ChannelOverride", "ChannelsSettings", "ConfigError",
    "CascadeSettings", "ConsoleSettings", "DeviceOverride", "DevicesSettings", "IceServer",
    "Key", "LimitsSettings",
    "MediaSettings",
    "NodeSettings", "Rate", "UpstreamSettings",
    "RecordingSettings", "SECTIONS", "Schedule", "Section", "Settings", "SimulatorSettings",
    "load_settings", "parse_settings", "settings_for_tests", "system_timezone",
]

@dataclass(frozen=True)
class Settings:
    """The whole checked configuration; `source` names the file it came from."""

    node: NodeSettings
    devices: DevicesSettings
    simulator: SimulatorSettings
    media: MediaSettings
    channels: ChannelsSettings
    recording: RecordingSettings
    upstreams: tuple[UpstreamSettings, ...]
    limits: LimitsSettings
    cascade: CascadeSettings
    users: tuple[UserSettings, ...]
    grants: tuple[GrantSettings, ...]
    metrics: MetricsSettings
    console: ConsoleSettings
    source: str


SECTIONS: tuple[Section, ...] = (
    Section("node", NODE_KEYS, _build_node),
    Section("devices", DEVICES_KEYS, _build_devices),
    Section("simulator", SIMULATOR_KEYS, lambda _, parsed: SimulatorSettings(**parsed.values)),
    Section("media", MEDIA_KEYS, build_media),
    Section("channels", CHANNELS_KEYS, lambda _, parsed: ChannelsSettings(**parsed.values)),
    Section("recording", RECORDING_KEYS, _build_recording),
    Section("upstreams", UPSTREAM_KEYS, build_upstreams, many=True),
    Section("limits", LIMITS_KEYS, build_limits),
    Section("cascade", CASCADE_KEYS, build_cascade),
    Section("users", USER_KEYS, build_users, many=True),
    Section("grants", GRANT_KEYS, build_grants, many=True),
    Section("metrics", METRICS_KEYS, build_metrics),
    Section("console", CONSOLE_KEYS, build_console),
)


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read and check the config file at `path`; raise `ConfigError` listing every problem."""
    name = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read the config file: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{name}:{line}: the file must be UTF-8 text ({exc.reason})"]) from None
    return parse_settings(text, name, base_dir=Path(path).parent)


def parse_settings(text: str, filename: str = "<string>", base_dir: Path | None = None) -> Settings:
    """Check YAML `text`; `base_dir` anchors relative paths (default: the working directory)."""
    reader = _Reader(filename, Path.cwd() if base_dir is None else Path(base_dir))
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        line, message = _syntax_error(exc, text)
        reader.report(line, "", f"YAML syntax error: {message}")
        raise ConfigError(reader.problems) from None
    settings = _read_document(reader, root)
    if reader.problems or settings is None:
        raise ConfigError(reader.problems)
    return settings


def _syntax_error(exc: yaml.YAMLError, text: str) -> tuple[int, str]:
    """The line and the text of a YAML syntax error."""
    if isinstance(exc, yaml.reader.ReaderError):  # bad characters: only a character offset
        return text.count("\n", 0, exc.position) + 1, f"{exc.reason} (U+{exc.character:04X})"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return 1, str(exc)
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or str(exc)
    if exc.context and exc.context_mark:
        message += f" ({exc.context} on line {exc.context_mark.line + 1})"
    if "'\\t'" in message:
        message += "; indent with spaces, not tabs"
    return (mark.line + 1 if mark else 1), message


def _read_document(reader: _Reader, root: yaml.Node | None) -> Settings | None:
    names = [section.name for section in SECTIONS]
    if root is not None and not isinstance(root, yaml.MappingNode) and not _is(root, "null"):
        reader.report(
            root, "", f"the top level must be a mapping of sections ({', '.join(names)}), "
            f"got {_describe(root)}"
        )
        return None
    homes = {key.name: section.name for section in SECTIONS for key in section.keys
             if not section.many}
    given: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for name, key_node, value_node in _entries(reader, root, "") or []:
        if name in names:
            given[name] = (key_node, value_node)
        elif name in homes:
            reader.report(key_node, name, f'unknown section; it belongs under "{homes[name]}:"')
        else:
            reader.report(key_node, name, "unknown section" + _suggest(name, names))
    built: dict[str, Any] = {}
    for section in SECTIONS:
        key_node, value_node = given.get(section.name, (None, None))
        if section.many:
            items = read_list(reader, value_node, section.name, section.keys, key_node)
            if items is not None:
                built[section.name] = section.build(reader, items)
            continue
        parsed = _read_mapping(reader, value_node, section.name, section.keys, key_node, homes)
        if parsed.complete:
            built[section.name] = section.build(reader, parsed)
    if len(built) < len(SECTIONS):
        return None
    settings = Settings(source=reader.filename, **built)
    _check_shares(reader, settings, given.get("channels", (None, None))[0])
    check_single_port(reader, settings.media, settings.node, given.get("media", (None, None))[1])
    return settings


def _check_shares(reader: _Reader, settings: Settings, anchor: yaml.Node | None) -> None:
    """A channel authorized for an upstream that is not configured is a typo, not a choice."""
    known = {upstream.id for upstream in settings.upstreams}
    for channel_id, override in settings.channels.overrides.items():
        for upstream_id in override.upstreams:
            if upstream_id not in known:
                reader.report(
                    anchor, f"channels.overrides.{channel_id}.upstreams",
                    f"{upstream_id} is not one of the upstreams ("
                    + (", ".join(sorted(known)) or "none configured") + ")",
                )


def settings_for_tests(data_dir: Path, **overrides: object) -> Settings:
    """Settings on loopback with ephemeral SIP and HTTP ports (port 0), storing under `data_dir`.

    Each override names a key by its dotted path, e.g. ``**{"devices.keepalive_timeout_s": 5}``;
    as a keyword argument, write the dots as double underscores: ``devices__keepalive_timeout_s=5``.
    Relative paths resolve against the working directory.
    """
    loopback = "127.0.0.1"
    node = {"sip_listen": f"{loopback}:0", "http_listen": f"{loopback}:0", "media_ip": loopback}
    node |= {"api_token": "test-token", "data_dir": os.fspath(Path(data_dir).absolute())}
    document: dict[str, Any] = {"node": node, "devices": {"password": "test-password"}}
    # Tests record only the channels they name (a real node's default is every channel).
    document["recording"] = {"channels": []}
    for dotted, value in overrides.items():
        *parents, leaf = dotted.replace("__", ".").split(".")
        target = document
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = _plain(value)
    text = yaml.safe_dump(document, sort_keys=False)
    return parse_settings(text, "<settings_for_tests>")


def _plain(value: object) -> object:
    """Turn test values into what `yaml.safe_dump` writes back as the same YAML."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value
