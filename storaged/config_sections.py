"""Section parsers of the array configuration: iscsi, targets (with CHAP), remote, replication,
metrics. Each takes a Reader on its mapping and returns the section's dataclass."""

from __future__ import annotations

import re
from pathlib import Path

from .config_luns import parse_lun
from .config_reader import Reader, parse_hostport, parse_size
from .config_types import (
    CHAP_ALGORITHM_NUMBERS,
    IscsiConfig,
    MetricsConfig,
    PeerConfig,
    RemoteConfig,
    ReplicationConfig,
    TargetConfig,
)
from .iscsi.chap import ChapCredentials

_IQN = re.compile(r"^(iqn\.\d{4}-\d{2}\.[^\s:]+(:[^\s]+)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$")


def _chap(r: Reader, key: str) -> ChapCredentials | None:
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



def parse_remote(r: Reader) -> RemoteConfig:
    """``remote``: a relative ``secret_file`` is read next to the configuration file."""
    listen = r.get("listen", str)
    if listen is not None:
        parse_hostport(listen, r.path_of("listen"), r.source)
    peers: list[PeerConfig] = []
    for p in r.items("peers"):
        name = p.get("name", str, required=True)
        address = p.get("address", str, required=True)
        parse_hostport(address, p.path_of("address"), p.source)
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


def parse_target(r: Reader) -> TargetConfig:
    name = r.get("name", str, required=True)
    if not _IQN.match(name):
        raise r.error("name", f"{name!r} is not an iqn./eui./naa. name")
    luns = tuple(parse_lun(x, i) for i, x in enumerate(r.items("luns")))
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


def parse_iscsi(r: Reader) -> IscsiConfig:
    d = IscsiConfig()
    listen = r.get("listen", str, d.listen)
    parse_hostport(listen, r.path_of("listen"), r.source)

    def num(key: str, default: int, lo: int, hi: int) -> int:
        v = r.get(key, int, default)
        if not lo <= v <= hi:
            raise r.error(key, f"must be {lo}..{hi}")
        return v

    def budget(key: str, default: int) -> int:
        return parse_size(r.get(key, (int, str), default), r.source, r.path_of(key))

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
        parse_hostport(str(a), r.path_of(f"advertise[{i}]"), r.source)
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


def parse_replication(r: Reader) -> ReplicationConfig:
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


def parse_metrics(r: Reader) -> MetricsConfig:
    listen = r.get("listen", str)
    if listen is not None:
        parse_hostport(listen, r.path_of("listen"), r.source)
    r.finish()
    return MetricsConfig(listen=listen)

