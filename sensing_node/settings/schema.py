"""The machinery every section uses: problems tied to lines, key tables, value parsers.

`Key` declares one key, `Section` a top-level mapping; `_read_mapping` reads a mapping against a
key table and reports what is unknown, missing or malformed, each at its own line. The small
parsers here (integers with a floor, choices, quoted IDs, lists reported item by item) are shared
by the section modules.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import yaml


class ConfigError(Exception):
    """The configuration cannot be used. `problems` holds every reason, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(list(problems))
        self.problems = list(problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


_TAG = "tag:yaml.org,2002:"


_KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
          "null": "an empty value", "timestamp": "a date", "binary": "binary data"}


_CONSTRUCT = yaml.constructor.SafeConstructor()


_REQUIRED: Any = object()


class _Invalid(Exception):
    """A value is unusable; the message is reported at the value's line."""


class _Reported(Exception):
    """A value is unusable and its problems have already been reported."""


class _Reader:
    """Collects problems, each tied to a file and line, while one document is read."""

    def __init__(self, filename: str, base_dir: Path) -> None:
        self.filename = filename
        self.base_dir = base_dir
        self._found: list[tuple[int, str]] = []

    def report(self, where: yaml.Node | int | None, path: str, message: str) -> None:
        line = where.start_mark.line + 1 if isinstance(where, yaml.Node) else where or 1
        text = f"{path}: {message}" if path else message
        self._found.append((line, f"{self.filename}:{line}: {text}"))

    @property
    def problems(self) -> list[str]:
        """Every problem so far, in file order (the sort is stable within one line)."""
        return [text for _, text in sorted(self._found, key=lambda found: found[0])]


class _Ctx(NamedTuple):
    """What a parser may need beyond the node: somewhere to report, and its own key path."""

    reader: _Reader
    path: str


Parser = Callable[[yaml.Node, _Ctx], Any]


@dataclass(frozen=True)
class Key:
    """One configuration key: how to parse it, its default (if it has one) and what it means."""

    name: str
    parse: Parser
    default: Any = _REQUIRED
    doc: str = ""


@dataclass
class _Parsed:
    """The values read from one mapping, plus the nodes needed to report cross-key problems."""

    values: dict[str, Any]
    nodes: dict[str, yaml.Node]
    complete: bool = True


@dataclass(frozen=True)
class Section:
    """A top-level mapping: its keys, and the function that turns their values into settings.

    A section with `many` is a list of such mappings (``upstreams:``); `build` then gets the
    list of parsed items.
    """

    name: str
    keys: tuple[Key, ...]
    build: Callable[[_Reader, Any], Any]
    many: bool = False


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = _KINDS.get(node.tag.removeprefix(_TAG), node.tag)
    return f"{kind} ({node.value})" if node.value else kind


def _is(node: yaml.Node | None, kind: str) -> bool:
    """Whether `node` is a scalar that YAML reads as `kind` (str, int, float, bool, null)."""
    return isinstance(node, yaml.ScalarNode) and node.tag == _TAG + kind


def _quoted(text: str) -> str:
    # A JSON string is also a valid YAML double-quoted string.
    return json.dumps(text, ensure_ascii=False)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return f'; did you mean "{close[0]}"?'
    return "; expected one of: " + ", ".join(choices)


def _entries(
    reader: _Reader, node: yaml.Node | None, path: str
) -> list[tuple[str, yaml.Node, yaml.Node]] | None:
    """The (name, key node, value node) triples of a mapping, or None if it is not one.

    An absent or empty value counts as an empty mapping, so a section whose keys are all
    commented out still works. Duplicate keys are reported: YAML would silently keep the last.
    """
    if node is None or _is(node, "null"):
        return []
    if not isinstance(node, yaml.MappingNode):
        reader.report(node, path, f"expected a mapping of keys, got {_describe(node)}")
        return None
    seen: dict[str, yaml.Node] = {}
    entries: list[tuple[str, yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            reader.report(key_node, path, f"a key must be plain text, got {_describe(key_node)}")
            continue
        name = key_node.value
        if name in seen:
            first = seen[name].start_mark.line + 1
            reader.report(key_node, _join(path, name), f"duplicate key (first on line {first})")
            continue
        seen[name] = key_node
        entries.append((name, key_node, value_node))
    return entries


def _read_mapping(
    reader: _Reader,
    node: yaml.Node | None,
    path: str,
    keys: tuple[Key, ...],
    anchor: yaml.Node | None,
    homes: Mapping[str, str] | None = None,
) -> _Parsed:
    """Parse a mapping against a key table; `anchor` is where missing keys are reported."""
    parsed = _Parsed({}, {})
    entries = _entries(reader, node, path)
    if entries is None:
        parsed.complete = False
        return parsed
    table = {key.name: key for key in keys}
    empty: dict[str, yaml.Node] = {}
    for name, key_node, value_node in entries:
        key = table.get(name)
        if key is None:
            home = (homes or {}).get(name)
            hint = f'; it belongs under "{home}:"' if home else _suggest(name, list(table))
            reader.report(key_node, _join(path, name), "unknown key" + hint)
        elif _is(value_node, "null"):
            empty[name] = key_node  # "key:" with nothing after it means the same as leaving it out
        else:
            parsed.nodes[name] = value_node
            try:
                parsed.values[name] = key.parse(value_node, _Ctx(reader, _join(path, name)))
            except _Invalid as exc:
                reader.report(value_node, _join(path, name), str(exc))
                parsed.complete = False
            except _Reported:
                parsed.complete = False
    for key in keys:
        if key.name in parsed.nodes:
            continue
        if key.default is not _REQUIRED:
            parsed.values[key.name] = key.default
            continue
        parsed.complete = False
        if key.name in empty:
            reader.report(empty[key.name], _join(path, key.name), "must not be empty")
        else:
            reader.report(anchor, _join(path, key.name), "required, but not given")
    return parsed


def _string(node: yaml.Node, what: str = "a string") -> str:
    if _is(node, "str"):
        return str(node.value)
    if isinstance(node, yaml.ScalarNode) and node.value:
        raise _Invalid(
            f"expected {what}, got {_describe(node)}; "
            f"put it in quotes if you mean the text: {_quoted(node.value)}"
        )
    raise _Invalid(f"expected {what}, got {_describe(node)}")


def _text(node: yaml.Node, ctx: _Ctx) -> str:
    value = _string(node)
    if not value.strip():
        raise _Invalid("must not be empty")
    return value


def _device_id(node: yaml.Node, type_code: str | None = None) -> str:
    if _is(node, "int"):
        raise _Invalid(
            f"a device ID must be quoted: YAML reads {node.value} as a number, which drops "
            f"leading zeros; write {_quoted(node.value)}"
        )
    value = _string(node, "a 20-digit ID")
    if not re.fullmatch(r"[0-9]{20}", value):
        raise _Invalid(f"expected exactly 20 digits (0-9), got {_quoted(value)}")
    if type_code is not None and value[10:13] != type_code:
        raise _Invalid(f"digits 11-13 (the type code) must be {type_code}, got {value[10:13]}")
    return value


def _items(
    node: yaml.SequenceNode, ctx: _Ctx, parse: Callable[[yaml.Node, list[Any]], Any]
) -> list[Any]:
    """Each item of a list through `parse(item, items so far)`; every bad item is reported at
    its own line before the list is refused."""
    out: list[Any] = []
    failed = False
    for index, item in enumerate(node.value):
        try:
            out.append(parse(item, out))
        except _Invalid as exc:
            ctx.reader.report(item, f"{ctx.path}[{index}]", str(exc))
            failed = True
    if failed:
        raise _Reported
    return out


def _integer(minimum: int) -> Parser:
    def parse(node: yaml.Node, ctx: _Ctx) -> int:
        if not _is(node, "int"):
            quoted_number = _is(node, "str") and node.value.strip().isdigit()
            hint = "; remove the quotes" if quoted_number else ""
            raise _Invalid(f"expected a whole number, got {_describe(node)}{hint}")
        value: int = _CONSTRUCT.construct_yaml_int(node)
        if value < minimum:
            raise _Invalid(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _choice(choices: tuple[str, ...]) -> Parser:
    def parse(node: yaml.Node, ctx: _Ctx) -> str:
        value = _string(node, "one of " + ", ".join(choices))
        if value not in choices:
            raise _Invalid(f"unknown value {_quoted(value)}" + _suggest(value, list(choices)))
        return value

    return parse


def _boolean(node: yaml.Node, ctx: _Ctx) -> bool:
    if _is(node, "bool"):
        return bool(_CONSTRUCT.construct_yaml_bool(node))
    raise _Invalid(f"expected true or false, got {_describe(node)}")


def _float(node: yaml.Node, what: str) -> float:
    """An int or float scalar as a float (may be .nan or .inf: callers check ranges)."""
    if _is(node, "int"):
        return float(_CONSTRUCT.construct_yaml_int(node))
    if _is(node, "float"):
        return float(_CONSTRUCT.construct_yaml_float(node))
    raise _Invalid(f"expected {what}, got {_describe(node)}")


def _by_id(keys: tuple[Key, ...], build: Callable[..., Any]) -> Parser:
    """A mapping of quoted 20-digit IDs to settings read with `keys` and made by `build`."""

    def parse(node: yaml.Node, ctx: _Ctx) -> Mapping[str, Any]:
        entries = _entries(ctx.reader, node, ctx.path)
        if entries is None:
            raise _Reported
        result: dict[str, Any] = {}
        failed = False
        for name, key_node, value_node in entries:
            path = _join(ctx.path, name)
            try:
                item_id = _device_id(key_node)
            except _Invalid as exc:
                ctx.reader.report(key_node, path, str(exc))
                failed = True
                continue
            parsed = _read_mapping(ctx.reader, value_node, path, keys, anchor=key_node)
            if parsed.complete:
                try:
                    result[item_id] = build(**parsed.values)
                except _Invalid as exc:  # a check across the entry's keys
                    ctx.reader.report(key_node, path, str(exc))
                    failed = True
            failed = failed or not parsed.complete
        if failed:
            raise _Reported
        return MappingProxyType(result)

    return parse


def _bounded(minimum: int, maximum: int) -> Parser:
    check = _integer(minimum)

    def parse(node: yaml.Node, ctx: _Ctx) -> int:
        value: int = check(node, ctx)
        if value > maximum:
            raise _Invalid(f"must be at most {maximum}, got {value}")
        return value

    return parse


def _number(minimum: float) -> Parser:
    def parse(node: yaml.Node, ctx: _Ctx) -> float:
        value = _float(node, "a number")
        if not value >= minimum:  # also rejects .nan
            raise _Invalid(f"must be at least {minimum:g}, got {node.value}")
        return value

    return parse
