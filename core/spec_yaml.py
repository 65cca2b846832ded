"""Reading spec text safely: strict YAML (no duplicate keys, bounded nesting) and size limits.

A spec is user input: a file may be in another encoding, repeat a key, nest thousands of levels
or expand a few YAML aliases into billions of values. Each of these is refused here with one
`SpecError` naming the file (or ``--set``) and the place, before anything walks the tree
recursively.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from modaloom.core.errors import SpecError

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists a spec may have (the presets use 7)."""
MAX_NODES = 100_000
"""Most values a spec may hold once YAML aliases are expanded (the presets hold a few hundred)."""
MAX_INT = 2**63 - 1
"""Largest integer (in magnitude) a spec may hold."""

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """Valid YAML that a spec may not be (its message is shown without "not valid YAML")."""


class SpecLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses duplicate keys and nesting deeper than `MAX_DEPTH`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(
                    f"nesting deeper than {MAX_DEPTH} levels at line {mark.line + 1}; "
                    "a spec is a few levels deep"
                )
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not None:
                raise _Refused(
                    f"duplicate key {key!r} on line {line} (first on line {first}); keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, origin: str) -> Any:
    """Parse spec text with `SpecLoader` and check its expanded size.

    Args:
        text: the YAML text.
        origin: where it came from, the path of the problem (a file name, ``--set key``).

    Raises:
        SpecError: invalid YAML, a duplicate key, too deep, or too large.
    """
    loader = SpecLoader(text)
    try:
        data = loader.get_single_data()
    except _Refused as exc:
        raise SpecError([(origin, str(exc))], source=origin) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:  # 2001-13-45, 10**5000
        raise SpecError([(origin, f"not valid YAML: {_one_line(exc)}")], source=origin) from None
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]
    check_size(data, origin)
    return data


def _one_line(exc: Exception) -> str:
    """A YAML error as one line: what is wrong and where."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem is None:
        return " ".join(str(exc).split())
    mark = exc.problem_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    context = f"{exc.context}: " if exc.context else ""
    return f"{context}{exc.problem}{where}"


def decode_spec(raw: bytes, origin: str) -> str:
    """The text of a spec file's bytes (UTF-8, a UTF-8 byte-order mark allowed).

    Raises:
        SpecError: the bytes are UTF-16 or not UTF-8.
    """
    if raw.startswith(_UTF16_BOMS):
        problem = "is UTF-16 encoded; save it as UTF-8"
        raise SpecError([(origin, problem)], source=origin)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problem = (
            f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save it as UTF-8"
        )
        raise SpecError([(origin, problem)], source=origin) from None


def read_spec_file(path: Path) -> dict[str, Any]:
    """A spec file's top-level mapping.

    Raises:
        SpecError: unreadable, not UTF-8, invalid YAML (see `parse_yaml`), or not a mapping.
    """
    origin = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError([(origin, f"cannot read: {exc.strerror}")], source=origin) from None
    data = parse_yaml(decode_spec(raw, origin), origin)
    if not isinstance(data, dict):
        raise SpecError([(origin, "the top level must be a mapping")], source=origin)
    return data


def check_size(tree: Any, origin: str) -> None:
    """Refuse a tree nested deeper than `MAX_DEPTH` or holding more than `MAX_NODES` values,
    counting a value reached through several aliases once per path (without recursion, and
    stopping at the limit, so a cycle or an alias bomb costs `MAX_NODES` steps).

    Raises:
        SpecError: at ``origin``.
    """
    stack: list[tuple[Any, int]] = [(tree, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            problem = (
                f"expands to more than {MAX_NODES:,} values (YAML aliases repeated?); "
                "a spec this large is refused"
            )
            raise SpecError([(origin, problem)], source=origin)
        if depth > MAX_DEPTH:
            problem = f"nests deeper than {MAX_DEPTH} levels; a spec is a few levels deep"
            raise SpecError([(origin, problem)], source=origin)
        if isinstance(node, Mapping):
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list | tuple):
            stack.extend((value, depth + 1) for value in node)


def number_problems(tree: Any) -> list[tuple[str, str]]:
    """(dotted path, message) of every infinite or NaN float and every integer beyond 64 bits
    in a tree checked by `check_size` (no spec value needs them; libraries fail on them)."""
    found: list[tuple[str, str]] = []
    stack: list[tuple[Any, str]] = [(tree, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            found.append((path, f"{node} is not a finite number; give one"))
        elif isinstance(node, int) and not -MAX_INT <= node <= MAX_INT:
            found.append((path, f"{node} is too large; integers in a spec fit in 64 bits"))
        elif isinstance(node, Mapping):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(node))
    return sorted(found)
