"""Array configuration: YAML in, frozen dataclasses out, every error naming the file and field.

The loader is strict: unknown keys are errors (a typo must not silently fall back to a default),
sizes accept units (``1GiB``, ``512M``), and cross-field rules (unique LUN numbers, file names,
target names) are checked once here so the daemon can trust what it gets.

The loader is split by concern: ``config_types`` (the dataclasses), ``config_reader`` (errors,
sizes, HOST:PORT, the strict YAML loader and mapping walker), ``config_luns`` (LUN entries and
their confinement to the data directory) and ``config_sections`` (the other sections). This
module assembles them and re-exports the public names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .config_luns import check_lun_files_confined, lun_file_escape
from .config_reader import ConfigError, Reader, StrictLoader, parse_hostport, parse_size
from .config_sections import parse_iscsi, parse_metrics, parse_remote, parse_replication, parse_target
from .config_types import (
    CHAP_ALGORITHM_NUMBERS,
    DEFAULT_LISTEN,
    ArrayConfig,
    CommandDeviceConfig,
    IscsiConfig,
    LunConfig,
    MapConfig,
    MetricsConfig,
    PeerConfig,
    RemoteConfig,
    ReplicationConfig,
    TargetConfig,
)

__all__ = [
    "CHAP_ALGORITHM_NUMBERS",
    "DEFAULT_CONFIG_YAML",
    "DEFAULT_LISTEN",
    "ArrayConfig",
    "CommandDeviceConfig",
    "ConfigError",
    "IscsiConfig",
    "LunConfig",
    "MapConfig",
    "MetricsConfig",
    "PeerConfig",
    "RemoteConfig",
    "ReplicationConfig",
    "TargetConfig",
    "check_lun_files_confined",
    "default_config",
    "load_config",
    "lun_file_escape",
    "parse_config",
    "parse_hostport",
    "parse_size",
]


def parse_config(data: Any, source: str) -> ArrayConfig:
    r = Reader(source, data)
    arr = r.sub("array")
    name = arr.get("name", str, required=True)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
        raise arr.error("name", "use letters, digits, '.', '_' and '-' (at most 64)")
    data_dir = arr.get("data_dir", str, "./data")
    log_level = arr.get("log_level", str, "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise arr.error("log_level", "must be DEBUG, INFO, WARNING or ERROR")
    arr.finish()
    iscsi = parse_iscsi(r.sub("iscsi"))
    remote = parse_remote(r.sub("remote"))
    replication = parse_replication(r.sub("replication"))
    metrics = parse_metrics(r.sub("metrics"))
    for i, peer in enumerate(remote.peers):
        if peer.name == name:
            raise ConfigError(source, f"remote.peers[{i}].name", f"{name} is this array's own name (array.name)")
    targets = tuple(parse_target(t) for t in r.items("targets"))
    if not targets:
        raise ConfigError(source, "targets", "at least one target is required")
    names: set[str] = set()
    files: set[str] = set()
    for i, t in enumerate(targets):
        if t.name in names:
            raise ConfigError(source, f"targets[{i}].name", f"{t.name} appears twice")
        names.add(t.name)
        for j, lun in enumerate(t.luns):
            if lun.map is not None:
                if lun.map.array == name:
                    raise ConfigError(source, f"targets[{i}].luns[{j}].map.array", "a LUN cannot map its own array")
                if lun.map.array not in {p.name for p in remote.peers}:
                    raise ConfigError(source, f"targets[{i}].luns[{j}].map.array",
                                      f"{lun.map.array} is not among remote.peers")
                continue
            if lun.file in files:
                raise ConfigError(source, f"targets[{i}].luns[{j}].file", f"{lun.file} is used twice")
            files.add(lun.file)
    r.finish()
    if source != "<embedded>":
        base = Path(source).resolve().parent
        if not Path(data_dir).is_absolute():
            data_dir = str(base / data_dir)
    return ArrayConfig(name=name, data_dir=data_dir, iscsi=iscsi, targets=targets, remote=remote,
                       replication=replication, source=source, log_level=log_level, metrics=metrics)


def load_config(path: str) -> ArrayConfig:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text: byte {exc.start} is {exc.object[exc.start]:#04x}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(path, "", f"not valid YAML: {where}{getattr(exc, 'problem', exc)}") from None
    return parse_config(data, path)


DEFAULT_CONFIG_YAML = """\
# The embedded default array: what `storaged` with no arguments serves.
array:
  name: storaged
  data_dir: ./storaged-data
iscsi:
  listen: 127.0.0.1:3260
targets:
  - name: iqn.2026-11.io.storaged:default
    alias: storaged default target
    luns:
      - lun: 0
        file: data0.img
        size: 4GiB
      - lun: 1
        file: data1.img
        size: 1GiB
"""


def default_config() -> ArrayConfig:
    return parse_config(yaml.safe_load(DEFAULT_CONFIG_YAML), "<embedded>")
