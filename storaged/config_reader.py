"""Field-level helpers of the array configuration loader: the error type, size and HOST:PORT
parsing, the strict YAML loader and the mapping walker every section parser uses.

Kept apart from the sections so each section module reads as rules only.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


class ConfigError(Exception):
    """A configuration problem, phrased as 'FILE: field.path: what is wrong'."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        super().__init__(f"{source}: {path}: {problem}" if path else f"{source}: {problem}")
        self.source = source
        self.path = path
        self.problem = problem


def parse_size(value: Any, source: str, path: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(source, path, "expected a size such as 1GiB, got a boolean")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
        n = int(m.group(1)) * _UNITS[unit]
    else:
        raise ConfigError(source, path, f"expected a size such as 1GiB or a byte count, got {value!r}")
    if n <= 0:
        raise ConfigError(source, path, "size must be positive")
    return n


def parse_hostport(value: str, path: str, source: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(source, path, f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


class Reader:
    """Walks a YAML mapping, checking types and unknown keys, tracking the field path."""

    def __init__(self, source: str, data: Any, path: str = "") -> None:
        self.source = source
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(source, path or "(top level)", f"expected a mapping, got {type(data).__name__}")
        self.data = data
        self.used: set[str] = set()

    def path_of(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise ConfigError(self.source, self.path_of(key), "is required")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ConfigError(self.source, self.path_of(key), f"expected {names}, got {value!r}")
        return value

    def sub(self, key: str) -> Reader:
        self.used.add(key)
        return Reader(self.source, self.data.get(key), self.path_of(key))

    def items(self, key: str) -> list[Reader]:
        self.used.add(key)
        value = self.data.get(key) or []
        if not isinstance(value, list):
            raise ConfigError(self.source, self.path_of(key), "expected a list")
        return [Reader(self.source, v, f"{self.path_of(key)}[{i}]") for i, v in enumerate(value)]

    def finish(self) -> None:
        unknown = sorted(set(map(str, self.data)) - self.used)
        if unknown:
            raise ConfigError(self.source, self.path_of(unknown[0]), "unknown key (check the spelling)")

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.path_of(key), problem)


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)

