"""Array configuration: YAML in, frozen dataclasses out, every error naming the file and field.

The loader is strict: unknown keys are errors (a typo must not silently fall back to a default),
sizes accept units (``1GiB``, ``512M``), and cross-field rules (unique LUN numbers, file names,
target names) are checked once here so the daemon can trust what it gets.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .iscsi.chap import ChapCredentials

DEFAULT_LISTEN = "127.0.0.1:3260"
_IQN = re.compile(r"^(iqn\.\d{4}-\d{2}\.[^\s:]+(:[^\s]+)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$")
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


class ConfigError(Exception):
    """A configuration problem, phrased as 'FILE: field.path: what is wrong'."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        super().__init__(f"{source}: {path}: {problem}" if path else f"{source}: {problem}")
        self.source = source
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class MapConfig:
    """A LUN map entry (spec Fig. 3): this LUN is a virtual volume served by a peer's LUN."""

    array: str
    lun: int
    #: the peer's target; "" = the peer's first target
    target: str = ""


@dataclass(frozen=True, slots=True)
class CommandDeviceConfig:
    #: glob patterns of origins allowed to issue commands (initiator names, "site-a/*"); None = all
    allowed: tuple[str, ...] | None = None
    slot_size: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class LunConfig:
    lun: int
    file: str
    size: int
    block_size: int = 512
    thin: bool = True
    read_only: bool = False
    product: str = "storaged LUN"
    serial: str | None = None
    command_device: CommandDeviceConfig | None = None
    map: MapConfig | None = None
    #: the file may lie outside the data directory (an absolute path or one with ..)
    allow_outside_data_dir: bool = False

    @property
    def kind(self) -> str:
        if self.map is not None:
            return "virtual"
        return "command_device" if self.command_device is not None else "data"


@dataclass(frozen=True, slots=True)
class PeerConfig:
    name: str
    address: str
    secret: str


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """How this array behaves as a remote-copy primary and secondary."""

    #: seconds between the secondary's own acquire/restore/purge rounds (autonomous mode)
    interval: float = 0.2
    #: what a full primary journal does to host writes: "suspend" the pairs (PSUE + bitmap) or
    #: "delay" the writes up to ``delay_limit`` seconds waiting for room, then suspend
    journal_full: str = "suspend"
    delay_limit: float = 5.0
    #: a primary that restarts takes no host write until its peer confirms it is still the
    #: primary (or an operator runs ``hostctl pairrelease``): the peer may have taken over
    restart_fence: bool = True


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """The remote communications interface: where this array listens and which peers it knows."""

    listen: str | None = None
    peers: tuple[PeerConfig, ...] = ()
    io_timeout: float = 10.0
    keepalive: float = 2.0
    #: connections to the listener still in the handshake at once; more are closed at once
    max_unauthenticated: int = 16
    #: seconds a connection may take to authenticate
    handshake_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus metrics: ``GET /metrics`` on ``listen`` (HOST:PORT); None = off."""

    listen: str | None = None


@dataclass(frozen=True, slots=True)
class TargetConfig:
    name: str
    luns: tuple[LunConfig, ...]
    alias: str = ""
    initiators: frozenset[str] | None = None
    chap: ChapCredentials | None = None
    portal_group_tag: int = 1


@dataclass(frozen=True, slots=True)
class IscsiConfig:
    listen: str = DEFAULT_LISTEN
    #: addresses announced in SendTargets; default: the address actually bound
    advertise: tuple[str, ...] = ()
    queue_depth: int = 128
    nop_interval: float = 30.0
    nop_timeout: float = 15.0
    login_timeout: float = 15.0
    max_recv_data_segment_length: int = 262144
    max_burst_length: int = 16776192
    first_burst_length: int = 262144
    max_outstanding_r2t: int = 16
    #: write data one session may have asked for (R2T) or accepted at once; beyond it writes wait
    session_write_budget: int = 32 << 20
    #: the same for all sessions together, and the task slots they share
    array_write_budget: int = 128 << 20
    array_tasks: int = 1024
    digests: tuple[str, ...] = ("CRC32C", "None")
    chap_algorithms: tuple[str, ...] = ("SHA3-256", "SHA-256", "SHA-1", "MD5")
    discovery_chap: ChapCredentials | None = None


@dataclass(frozen=True, slots=True)
class ArrayConfig:
    name: str
    data_dir: str
    iscsi: IscsiConfig
    targets: tuple[TargetConfig, ...]
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = "<embedded>"
    log_level: str = "INFO"

    def with_overrides(self, listen: str | None = None, data_dir: str | None = None,
                       metrics_listen: str | None = None) -> ArrayConfig:
        """Apply command-line overrides (``--listen``, ``--data-dir``, ``--metrics-listen``)."""
        from dataclasses import replace

        cfg = self
        if listen is not None:
            parse_hostport(listen, "--listen", "command line")
            cfg = replace(cfg, iscsi=replace(cfg.iscsi, listen=listen))
        if data_dir is not None:
            cfg = replace(cfg, data_dir=data_dir)
        if metrics_listen is not None:
            parse_hostport(metrics_listen, "--metrics-listen", "command line")
            cfg = replace(cfg, metrics=MetricsConfig(listen=metrics_listen))
        return cfg


CHAP_ALGORITHM_NUMBERS = {"MD5": 5, "SHA-1": 6, "SHA-256": 7, "SHA3-256": 8}


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


class _Reader:
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

    def _p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise ConfigError(self.source, self._p(key), "is required")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ConfigError(self.source, self._p(key), f"expected {names}, got {value!r}")
        return value

    def sub(self, key: str) -> _Reader:
        self.used.add(key)
        return _Reader(self.source, self.data.get(key), self._p(key))

    def items(self, key: str) -> list[_Reader]:
        self.used.add(key)
        value = self.data.get(key) or []
        if not isinstance(value, list):
            raise ConfigError(self.source, self._p(key), "expected a list")
        return [_Reader(self.source, v, f"{self._p(key)}[{i}]") for i, v in enumerate(value)]

    def finish(self) -> None:
        unknown = sorted(set(map(str, self.data)) - self.used)
        if unknown:
            raise ConfigError(self.source, self._p(unknown[0]), "unknown key (check the spelling)")

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self._p(key), problem)


def _chap(r: _Reader, key: str) -> ChapCredentials | None:
    if key not in r.data or r.data[key] is None:
        r.used.add(key)
        return None
    c = r.sub(key)
    creds = ChapCredentials(
        username=c.get("username", str, required=True),
        secret=c.get("secret", str, required=True),
        mutual_username=c.get("mutual_username", str),
        mutual_secret=c.get("mutual_secret", str),
    )
    c.finish()
    if (creds.mutual_username is None) != (creds.mutual_secret is None):
        raise c.error("mutual_secret", "mutual_username and mutual_secret go together")
    for name, secret in (("secret", creds.secret), ("mutual_secret", creds.mutual_secret)):
        if secret is not None and not 12 <= len(secret) <= 256:
            raise c.error(name, "CHAP secrets must be 12 to 256 characters (RFC 7143 s.12.1.3)")
    if creds.mutual_secret is not None and creds.mutual_secret == creds.secret:
        raise c.error("mutual_secret", "must differ from secret (RFC 7143 s.12.1.3)")
    return creds


def _serial(r: _Reader) -> str | None:
    """VPD page 80h and the T10 designator carry the serial as ASCII: refuse what they cannot."""
    serial = r.get("serial", str)
    if serial is not None and not (1 <= len(serial) <= 64 and all(0x20 < ord(c) < 0x7F for c in serial)):
        raise r.error("serial", f"{serial!r}: use 1 to 64 printable ASCII characters, no spaces")
    return serial


def _lun(r: _Reader, index: int) -> LunConfig:
    lun = r.get("lun", int, index)
    if not 0 <= lun < 16384:
        raise r.error("lun", "LUN numbers run from 0 to 16383")
    mapping = None
    if r.data.get("map") is not None:
        m = r.sub("map")
        mapping = MapConfig(array=m.get("array", str, required=True), lun=m.get("lun", int, required=True),
                            target=m.get("target", str, ""))
        m.finish()
        for key in ("size", "file", "block_size", "thin", "command_device"):
            if key in r.data:
                raise r.error(key, "a mapped LUN (virtual volume) takes its geometry from the peer's LUN")
        r.used.add("map")
        cfg = LunConfig(lun=lun, file="", size=0, product=r.get("product", str, "storaged VVOL")[:16],
                        serial=_serial(r), read_only=r.get("read_only", bool, False), map=mapping)
        r.finish()
        return cfg
    r.used.add("map")
    cmddev = None
    raw_cd = r.data.get("command_device")
    if raw_cd is True or isinstance(raw_cd, dict):
        c = r.sub("command_device") if isinstance(raw_cd, dict) else _Reader(r.source, {}, r._p("command_device"))
        allowed = c.get("allowed", list)
        if allowed is not None and not all(isinstance(a, str) for a in allowed):
            raise c.error("allowed", "expected a list of initiator name patterns")
        slot_size = parse_size(c.get("slot_size", (int, str), 256 * 1024), r.source, c._p("slot_size"))
        if slot_size % 4096:
            raise c.error("slot_size", "must be a multiple of 4096")
        cmddev = CommandDeviceConfig(allowed=tuple(allowed) if allowed is not None else None, slot_size=slot_size)
        c.finish()
        r.used.add("command_device")
    elif raw_cd not in (None, False):
        raise r.error("command_device", "expected true or a mapping (allowed, slot_size)")
    else:
        r.used.add("command_device")
    block_size = r.get("block_size", int, 512)
    if block_size not in (512, 4096):
        raise r.error("block_size", "must be 512 or 4096")
    default_size = "16MiB" if cmddev is not None else None
    size = parse_size(r.get("size", (int, str), default_size, required=default_size is None), r.source, r._p("size"))
    if size % block_size:
        raise r.error("size", f"{size} is not a multiple of the block size {block_size}")
    if cmddev is not None and size < 2 * cmddev.slot_size:
        raise r.error("size", f"a command device needs room for the directory and a slot ({2 * cmddev.slot_size})")
    file = r.get("file", str, f"lun{lun}.img")
    outside = r.get("allow_outside_data_dir", bool, False)
    if not file.strip():
        raise r.error("file", "must name a file")
    given, file = file, os.path.normpath(file)
    if not outside and (os.path.isabs(file) or file == ".." or file.startswith("../")):
        raise r.error("file", f"{given} is outside the data directory (set allow_outside_data_dir: true on "
                              "this LUN if that is intended)")
    cfg = LunConfig(
        lun=lun,
        file=file,
        size=size,
        block_size=block_size,
        thin=r.get("thin", bool, True),
        read_only=r.get("read_only", bool, False),
        product=r.get("product", str, "storaged CMDDEV" if cmddev else "storaged LUN")[:16],
        serial=_serial(r),
        command_device=cmddev,
        allow_outside_data_dir=outside,
    )
    r.finish()
    return cfg


def lun_file_escape(data_dir: str, lun: LunConfig) -> str | None:
    """Why a data LUN's file lies outside ``data_dir`` once every symbolic link on its way is
    resolved (a link to a file outside, a linked parent directory), or None (inside, allowed, or
    not a file LUN). The loader's check is lexical; this one needs the final data_dir and the disk,
    so startup, ``--check-config`` and reload run it. The data directory may itself be a link."""
    if lun.allow_outside_data_dir or lun.kind != "data":
        return None
    root = os.path.realpath(data_dir)
    real = os.path.realpath(os.path.join(data_dir, lun.file))
    if os.path.commonpath((root, real)) == root:
        return None  # inside (the directory itself is the directory check's to report)
    return (f"{lun.file} is outside the data directory through a symbolic link (it resolves to {real}, the data "
            f"directory to {root}; set allow_outside_data_dir: true on this LUN if that is intended)")


def check_lun_files_confined(cfg: ArrayConfig) -> None:
    """Startup's check: ConfigError naming the first data LUN a symbolic link takes out of the data
    directory (after ``--data-dir``, before any file is opened or created)."""
    for i, t in enumerate(cfg.targets):
        for j, lun in enumerate(t.luns):
            problem = lun_file_escape(cfg.data_dir, lun)
            if problem is not None:
                raise ConfigError(cfg.source, f"targets[{i}].luns[{j}].file", problem)


def _remote(r: _Reader) -> RemoteConfig:
    listen = r.get("listen", str)
    if listen is not None:
        parse_hostport(listen, r._p("listen"), r.source)
    peers = []
    for p in r.items("peers"):
        name = p.get("name", str, required=True)
        address = p.get("address", str, required=True)
        parse_hostport(address, p._p("address"), p.source)
        secret = p.get("secret", str)
        secret_file = p.get("secret_file", str)
        if (secret is None) == (secret_file is None):
            raise p.error("secret", "give exactly one of secret and secret_file")
        if secret_file is not None:
            path = Path(secret_file)
            if not path.is_absolute() and p.source != "<embedded>":
                path = Path(p.source).resolve().parent / path
            try:
                secret = path.read_text().strip()
            except OSError as exc:
                raise p.error("secret_file", f"cannot read {path}: {exc.strerror}") from None
        assert secret is not None
        if len(secret) < 16:
            raise p.error("secret" if secret_file is None else "secret_file", "the shared secret needs 16+ characters")
        if any(q.name == name for q in peers):
            raise p.error("name", f"{name} appears twice")
        peers.append(PeerConfig(name, address, secret))
        p.finish()
    io_timeout = float(r.get("io_timeout", float, 10.0))
    keepalive = float(r.get("keepalive", float, 2.0))
    if not 0.1 <= io_timeout <= 600:
        raise r.error("io_timeout", "must be 0.1..600 seconds")
    max_unauth = int(r.get("max_unauthenticated", int, 16))
    if not 1 <= max_unauth <= 4096:
        raise r.error("max_unauthenticated", "must be 1..4096")
    handshake_timeout = float(r.get("handshake_timeout", float, 10.0))
    if not 0.5 <= handshake_timeout <= 120:
        raise r.error("handshake_timeout", "must be 0.5..120 seconds")
    cfg = RemoteConfig(listen=listen, peers=tuple(peers), io_timeout=io_timeout, keepalive=keepalive,
                       max_unauthenticated=max_unauth, handshake_timeout=handshake_timeout)
    r.finish()
    return cfg


def _target(r: _Reader) -> TargetConfig:
    name = r.get("name", str, required=True)
    if not _IQN.match(name):
        raise r.error("name", f"{name!r} is not an iqn./eui./naa. name")
    luns = tuple(_lun(x, i) for i, x in enumerate(r.items("luns")))
    if not luns:
        raise r.error("luns", "a target needs at least one LUN")
    seen: set[int] = set()
    for i, lun in enumerate(luns):
        if lun.lun in seen:
            raise r.error(f"luns[{i}].lun", f"LUN {lun.lun} appears twice")
        seen.add(lun.lun)
    initiators = r.get("initiators", list)
    if initiators is not None:
        for i, ini in enumerate(initiators):
            if not isinstance(ini, str) or not _IQN.match(ini):
                raise r.error(f"initiators[{i}]", f"{ini!r} is not an initiator name")
    tpgt = r.get("portal_group_tag", int, 1)
    if not 1 <= tpgt <= 65535:
        raise r.error("portal_group_tag", "must be 1..65535")
    cfg = TargetConfig(
        name=name,
        luns=luns,
        alias=r.get("alias", str, ""),
        initiators=frozenset(initiators) if initiators is not None else None,
        chap=_chap(r, "chap"),
        portal_group_tag=tpgt,
    )
    r.finish()
    return cfg


def _iscsi(r: _Reader) -> IscsiConfig:
    d = IscsiConfig()
    listen = r.get("listen", str, d.listen)
    parse_hostport(listen, r._p("listen"), r.source)

    def num(key: str, default: int, lo: int, hi: int) -> int:
        v = r.get(key, int, default)
        if not lo <= v <= hi:
            raise r.error(key, f"must be {lo}..{hi}")
        return v

    def budget(key: str, default: int) -> int:
        return parse_size(r.get(key, (int, str), default), r.source, r._p(key))

    digests = tuple(r.get("digests", list, list(d.digests)))
    for i, dg in enumerate(digests):
        if dg not in ("CRC32C", "None"):
            raise r.error(f"digests[{i}]", "must be CRC32C or None")
    algos = tuple(r.get("chap_algorithms", list, list(d.chap_algorithms)))
    for i, a in enumerate(algos):
        if a not in CHAP_ALGORITHM_NUMBERS:
            raise r.error(f"chap_algorithms[{i}]", f"must be one of {', '.join(CHAP_ALGORITHM_NUMBERS)}")
    advertise = tuple(r.get("advertise", list, []))
    for i, a in enumerate(advertise):
        parse_hostport(str(a), r._p(f"advertise[{i}]"), r.source)
    cfg = IscsiConfig(
        listen=listen,
        advertise=advertise,
        queue_depth=num("queue_depth", d.queue_depth, 1, 4096),
        nop_interval=float(r.get("nop_interval", float, d.nop_interval)),
        nop_timeout=float(r.get("nop_timeout", float, d.nop_timeout)),
        login_timeout=float(r.get("login_timeout", float, d.login_timeout)),
        max_recv_data_segment_length=num("max_recv_data_segment_length", d.max_recv_data_segment_length,
                                         512, (1 << 24) - 1),
        max_burst_length=num("max_burst_length", d.max_burst_length, 512, (1 << 24) - 1),
        first_burst_length=num("first_burst_length", d.first_burst_length, 512, (1 << 24) - 1),
        max_outstanding_r2t=num("max_outstanding_r2t", d.max_outstanding_r2t, 1, 65535),
        session_write_budget=budget("session_write_budget", d.session_write_budget),
        array_write_budget=budget("array_write_budget", d.array_write_budget),
        array_tasks=num("array_tasks", d.array_tasks, 1, 1 << 20),
        digests=digests,
        chap_algorithms=algos,
        discovery_chap=_chap(r, "discovery_chap"),
    )
    if cfg.array_write_budget < cfg.session_write_budget:
        raise r.error("array_write_budget", "must be at least session_write_budget")
    r.finish()
    return cfg


def _replication(r: _Reader) -> ReplicationConfig:
    d = ReplicationConfig()
    interval = float(r.get("interval", float, d.interval))
    if not 0.01 <= interval <= 60:
        raise r.error("interval", "must be 0.01..60 seconds")
    policy = r.get("journal_full", str, d.journal_full)
    if policy not in ("suspend", "delay"):
        raise r.error("journal_full", "must be suspend or delay")
    limit = float(r.get("delay_limit", float, d.delay_limit))
    if not 0 <= limit <= 600:
        raise r.error("delay_limit", "must be 0..600 seconds")
    fence = bool(r.get("restart_fence", bool, d.restart_fence))
    r.finish()
    return ReplicationConfig(interval, policy, limit, fence)


def _metrics(r: _Reader) -> MetricsConfig:
    listen = r.get("listen", str)
    if listen is not None:
        parse_hostport(listen, r._p("listen"), r.source)
    r.finish()
    return MetricsConfig(listen=listen)


def parse_config(data: Any, source: str) -> ArrayConfig:
    r = _Reader(source, data)
    arr = r.sub("array")
    name = arr.get("name", str, required=True)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
        raise arr.error("name", "use letters, digits, '.', '_' and '-' (at most 64)")
    data_dir = arr.get("data_dir", str, "./data")
    log_level = arr.get("log_level", str, "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise arr.error("log_level", "must be DEBUG, INFO, WARNING or ERROR")
    arr.finish()
    iscsi = _iscsi(r.sub("iscsi"))
    remote = _remote(r.sub("remote"))
    replication = _replication(r.sub("replication"))
    metrics = _metrics(r.sub("metrics"))
    for i, peer in enumerate(remote.peers):
        if peer.name == name:
            raise ConfigError(source, f"remote.peers[{i}].name", f"{name} is this array's own name (array.name)")
    targets = tuple(_target(t) for t in r.items("targets"))
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
    return ArrayConfig(name=name, data_dir=data_dir, iscsi=iscsi, targets=targets, remote=remote, replication=replication, source=source,
                       log_level=log_level, metrics=metrics)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_config(path: str) -> ArrayConfig:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
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
