"""The host's configuration (like HORCM's horcm.conf): which arrays it drives and how it reaches them.

::

    initiator: iqn.2026-11.io.storaged:host1     # initiator name for iscsi:// sessions
    arrays: [site-a, site-b]                      # the arrays this host may drive
    local:
      array: site-a                                # the array this host is attached to
      command_device: iscsi://127.0.0.1:3260/iqn.2026-11.io.storaged:site-a/1   # or /dev/sdX or a file
      devices: {}                                  # optional: LUN number -> block device path
    timeout: 30

Found at ``--config FILE``, else ``$HOSTCTL_CONFIG``, else ``/etc/storaged/hostctl.yaml``. The loader
is strict: unknown keys are errors naming the file and the field, so a typo never falls back to a
default silently.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from storaged.iscsi.initiator import IscsiUrl

from .errors import ConfigError

DEFAULT_PATH = "/etc/storaged/hostctl.yaml"
ENV_VAR = "HOSTCTL_CONFIG"
DEFAULT_INITIATOR = "iqn.2026-11.io.storaged:hostctl"
DEFAULT_TIMEOUT = 30.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_IQN = re.compile(r"^(iqn\.\d{4}-\d{2}\.[^\s:]+(:\S+)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$")


@dataclass(frozen=True, slots=True)
class LocalConfig:
    #: the array this host is attached to; None only when running from --device without a config
    array: str | None
    #: iscsi:// URL, block device path or file
    command_device: str | None
    #: LUN number of the local array -> block device path (block-device mode routing)
    devices: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HostConfig:
    local: LocalConfig
    initiator: str = DEFAULT_INITIATOR
    #: the arrays this host may drive; empty = any (only without a config file)
    arrays: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    source: str = "<built-in>"

    def allows(self, array: str) -> bool:
        return not self.arrays or array in self.arrays


def find_config(explicit: str | None, env: Mapping[str, str] | None = None) -> tuple[str | None, bool]:
    """The config file to read and whether it must exist (it must, unless it is the default path)."""
    env = os.environ if env is None else env
    if explicit:
        return explicit, True
    if env.get(ENV_VAR):
        return env[ENV_VAR], True
    return DEFAULT_PATH, False


class _Reader:
    def __init__(self, source: str, data: Any, path: str, allowed: tuple[str, ...]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(source, path or "(top level)", f"expected a mapping, got {_kind(data)}")
        self.source, self.data, self.path = source, data, path
        for key in data:
            if key not in allowed:
                raise ConfigError(
                    source, self.p(str(key)), f"unknown field (expected one of: {', '.join(allowed)})"
                )

    def p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.p(key), problem)


def _kind(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "nothing",
    }.get(type(value), type(value).__name__)


def parse_config(data: Any, source: str = "<string>", base_dir: str | None = None) -> HostConfig:
    """Check a parsed YAML document and build the config; every ConfigError names source and field."""
    top = _Reader(source, data, "", ("initiator", "arrays", "local", "timeout"))
    d = top.data

    initiator = d.get("initiator", DEFAULT_INITIATOR)
    if not isinstance(initiator, str) or not _IQN.match(initiator):
        raise top.error(
            "initiator", f"expected an iSCSI name such as iqn.2026-11.com.example:host1, got {initiator!r}"
        )

    timeout = d.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 86400:
        raise top.error("timeout", f"expected seconds (a number above 0), got {timeout!r}")

    if "local" not in d or d["local"] is None:
        raise top.error("local", "is required (local.array and local.command_device)")
    loc = _Reader(source, d["local"], "local", ("array", "command_device", "devices"))
    ld = loc.data
    array = ld.get("array")
    if array is None:
        raise loc.error("array", "is required: the name of the array this host is attached to")
    if not isinstance(array, str) or not _NAME.match(array):
        raise loc.error("array", f"expected an array name, got {array!r}")
    cmd = ld.get("command_device")
    if cmd is None:
        raise loc.error("command_device", "is required: an iscsi:// URL, a block device or a file")
    if not isinstance(cmd, str) or not cmd.strip():
        raise loc.error("command_device", f"expected an iscsi:// URL or a path, got {cmd!r}")
    cmd = cmd.strip()
    if cmd.startswith("iscsi://"):
        try:
            IscsiUrl.parse(cmd)
        except ValueError as exc:
            raise loc.error("command_device", str(exc)) from None
    elif "://" in cmd:
        raise loc.error("command_device", f"expected iscsi://host[:port]/target/lun or a path, got {cmd!r}")
    else:
        cmd = _resolve(cmd, base_dir)
    raw_devices = ld.get("devices") or {}
    if not isinstance(raw_devices, dict):
        raise loc.error(
            "devices", f"expected a mapping of LUN number to device path, got {_kind(raw_devices)}"
        )
    devices: dict[int, str] = {}
    for key, value in raw_devices.items():
        where = f"devices.{key}"
        if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and key.isdigit())):
            raise loc.error(where, "the key must be a LUN number")
        lun = int(key)
        if not 0 <= lun < 16384:
            raise loc.error(where, "LUN numbers are 0..16383")
        if not isinstance(value, str) or not value.strip() or "://" in value:
            raise loc.error(where, f"expected a block device path, got {value!r}")
        devices[lun] = _resolve(value.strip(), base_dir)

    raw_arrays = d.get("arrays")
    if raw_arrays is None:
        arrays: tuple[str, ...] = (array,)
    else:
        if not isinstance(raw_arrays, list) or not raw_arrays:
            raise top.error("arrays", f"expected a list of array names, got {raw_arrays!r}")
        seen: list[str] = []
        for i, name in enumerate(raw_arrays):
            if not isinstance(name, str) or not _NAME.match(name):
                raise top.error(f"arrays[{i}]", f"expected an array name, got {name!r}")
            if name in seen:
                raise top.error(f"arrays[{i}]", f"{name} is listed twice")
            seen.append(name)
        arrays = tuple(seen)
        if array not in arrays:
            raise loc.error("array", f"{array} is not in arrays ({', '.join(arrays)})")

    return HostConfig(LocalConfig(array, cmd, devices), initiator, arrays, float(timeout), source)


def _resolve(path: str, base_dir: str | None) -> str:
    """Relative paths are relative to the config file (so a test's config can sit beside its files)."""
    if base_dir and not os.path.isabs(path):
        return os.path.normpath(os.path.join(base_dir, path))
    return path


def load_config(path: str) -> HostConfig:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, where, f"not valid YAML: {problem}") from None
    return parse_config(data, path, os.path.dirname(os.path.abspath(path)))
