"""The array configuration as frozen dataclasses: what the loader returns and the daemon trusts."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config_reader import parse_hostport
from .iscsi.chap import ChapCredentials

DEFAULT_LISTEN = "127.0.0.1:3260"


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
