"""The ``users:``, ``grants:`` and ``metrics:`` sections: who may use the node's API, what each
consumer (an API user or an upper platform) is granted beyond the sharing classes, and what
``/metrics`` shows.

Tokens are never written into the file in clear: a user has ``token_sha256`` (what
``sensing-node hash-token`` prints) or ``token_file`` (a file holding the token, such as a
mounted secret; only its SHA-256 is kept). ``node.api_token`` stays a shorthand for one admin.

A grant lasts at most `MAX_GRANT_DAYS` (district rules); a longer one is refused with its line.
Times without a zone are the node's local time (``node.timezone``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from .devices import _prefixes
from .schema import (
    Key,
    _boolean,
    _choice,
    _Ctx,
    _describe,
    _integer,
    _Invalid,
    _items,
    _join,
    _Parsed,
    _Reader,
    _string,
    _text,
)

__all__ = [
    "ACTIONS",
    "GRANT_KEYS",
    "MAX_GRANT_DAYS",
    "METRICS_KEYS",
    "ROLES",
    "USER_KEYS",
    "GrantSettings",
    "MetricsSettings",
    "UserSettings",
    "build_grants",
    "build_metrics",
    "build_users",
    "check_grant_span",
    "hash_token",
]

ROLES = ("viewer", "operator", "admin")
ACTIONS = ("live", "playback", "export")
MAX_GRANT_DAYS = 365


def hash_token(token: str) -> str:
    """The SHA-256 (hex) a user's token is kept as."""
    return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class UserSettings:
    """One API user (``users:`` entry): `channels` None sees every channel its role allows,
    else only the channel IDs or civil-code prefixes listed."""

    name: str
    token_sha256: str
    role: str
    channels: tuple[str, ...] | None


@dataclass(frozen=True)
class GrantSettings:
    """One grant (``grants:`` entry, or one made through the API): `consumer` (an upstream's
    code or a user's name) may take `actions` on `channels` (IDs or civil-code prefixes) from
    `valid_from` to `valid_to`, with at most `max_sessions` at once, for `purpose`. Times
    without a zone are the node's local time."""

    consumer: str
    channels: tuple[str, ...]
    actions: tuple[str, ...]
    purpose: str
    valid_from: datetime
    valid_to: datetime
    max_sessions: int


@dataclass(frozen=True)
class MetricsSettings:
    """The ``metrics:`` section."""

    #: per-channel RTP series as labels (many channels make many series)
    per_channel: bool


def check_grant_span(valid_from: datetime, valid_to: datetime) -> str | None:
    """Why a grant's validity cannot be taken, or None: both times with a zone or both
    without, the end after the start, and at most `MAX_GRANT_DAYS` between them."""
    if (valid_from.tzinfo is None) != (valid_to.tzinfo is None):
        return "valid_from and valid_to must both carry a zone, or neither"
    if valid_to <= valid_from:
        return "valid_to must come after valid_from"
    if valid_to - valid_from > timedelta(days=MAX_GRANT_DAYS):
        days = (valid_to - valid_from) / timedelta(days=1)
        return (f"a grant lasts at most {MAX_GRANT_DAYS} days; this one lasts {days:.1f} "
                f"(split it, and renew it when it ends)")
    return None


# -- parsers ----------------------------------------------------------------------------------


def _sha256(node: yaml.Node, ctx: _Ctx) -> str:
    value = _string(node, "a SHA-256 in hex").strip().lower()
    if value and not re.fullmatch(r"[0-9a-f]{64}", value):
        raise _Invalid("expected 64 hex digits (sensing-node hash-token prints them)")
    return value


def _optional_file(node: yaml.Node, ctx: _Ctx) -> Path | None:
    text = _string(node, "a file path")
    return Path(text).expanduser() if text.strip() else None


def _channel_list(node: yaml.Node, ctx: _Ctx) -> tuple[str, ...] | None:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
        return None
    return _prefixes(node, ctx)


def _actions(node: yaml.Node, ctx: _Ctx) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise _Invalid(f"expected a list of actions ({', '.join(ACTIONS)}), got "
                       f"{_describe(node)}")

    def one(item: yaml.Node, seen: list[str]) -> str:
        value = _string(item, "an action").strip()
        if value not in ACTIONS:
            raise _Invalid(f"unknown action {value!r}; one of {', '.join(ACTIONS)}")
        if value in seen:
            raise _Invalid(f"{value} is listed twice")
        return value

    return tuple(_items(node, ctx, one))


def _time(node: yaml.Node, ctx: _Ctx) -> datetime:
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":timestamp"):
        text = str(node.value)
    else:
        text = _string(node, "an ISO 8601 time such as 2026-12-06T08:00:00+08:00")
    try:
        return datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise _Invalid(f"expected an ISO 8601 time such as 2026-12-06T08:00:00+08:00, got "
                       f"{text!r}") from None


def _channels_required(node: yaml.Node, ctx: _Ctx) -> tuple[str, ...]:
    value = _prefixes(node, ctx)
    if not value:
        raise _Invalid("list at least one channel ID or civil-code prefix")
    return value


USER_KEYS: tuple[Key, ...] = (
    Key("name", _text, doc="the user's name, as the audit log names them"),
    Key("token_sha256", _sha256, "", "SHA-256 of the user's bearer token (hash-token prints it)"),
    Key("token_file", _optional_file, None, "or: a file holding the token (a mounted secret)"),
    Key("role", _choice(ROLES), "viewer", "viewer | operator | admin"),
    Key("channels", _channel_list, None, "channel IDs or prefixes this user sees; default: all"),
)

GRANT_KEYS: tuple[Key, ...] = (
    Key("consumer", _text, doc="an upstream's 20-digit code or a user's name"),
    Key("channels", _channels_required, doc="channel IDs or civil-code prefixes"),
    Key("actions", _actions, doc="live, playback, export"),
    Key("purpose", _text, doc="what for: case, task or agreement, as the audit log shows it"),
    Key("valid_from", _time, doc="ISO 8601; without a zone, node.timezone"),
    Key("valid_to", _time, doc=f"ISO 8601, at most {MAX_GRANT_DAYS} days after valid_from"),
    Key("max_sessions", _integer(1), 1, "sessions the consumer may hold under it at once"),
)

METRICS_KEYS: tuple[Key, ...] = (
    Key("per_channel", _boolean, False, "RTP series per channel, as labels"),
)


def build_users(reader: _Reader, items: list[tuple[yaml.Node, _Parsed]]) -> tuple[
        UserSettings, ...]:
    out: list[UserSettings] = []
    seen: dict[str, int] = {}
    tokens: dict[str, str] = {}
    for index, (node, parsed) in enumerate(items):
        v: dict[str, Any] = dict(parsed.values)
        path = f"users[{index}]"
        digest = v["token_sha256"]
        token_file = v["token_file"]
        if bool(digest) == (token_file is not None):
            reader.report(node, path, "give the user token_sha256 or token_file (one of them)")
            continue
        if token_file is not None:
            file = token_file if token_file.is_absolute() else reader.base_dir / token_file
            try:
                token = file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reader.report(parsed.nodes.get("token_file", node), _join(path, "token_file"),
                              f"cannot read the token file {file}: {exc}")
                continue
            if not token:
                reader.report(parsed.nodes.get("token_file", node), _join(path, "token_file"),
                              f"the token file {file} is empty")
                continue
            digest = hash_token(token)
        name = v["name"].strip()
        line = node.start_mark.line + 1
        if name in seen:
            reader.report(parsed.nodes.get("name", node), _join(path, "name"),
                          f"user {name!r} is listed twice (first on line {seen[name]})")
        elif digest in tokens:
            reader.report(node, path, f"user {name!r} has the same token as {tokens[digest]!r}")
        seen.setdefault(name, line)
        tokens.setdefault(digest, name)
        out.append(UserSettings(name, digest, v["role"], v["channels"]))
    return tuple(out)


def build_grants(reader: _Reader, items: list[tuple[yaml.Node, _Parsed]]) -> tuple[
        GrantSettings, ...]:
    out: list[GrantSettings] = []
    for index, (node, parsed) in enumerate(items):
        v: dict[str, Any] = dict(parsed.values)
        problem = check_grant_span(v["valid_from"], v["valid_to"])
        if problem is not None:
            reader.report(parsed.nodes.get("valid_to", node), f"grants[{index}].valid_to",
                          problem)
            continue
        v["consumer"] = v["consumer"].strip()
        out.append(GrantSettings(**v))
    return tuple(out)


def build_metrics(reader: _Reader, parsed: _Parsed) -> MetricsSettings:
    return MetricsSettings(**parsed.values)
