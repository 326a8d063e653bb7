"""Human-readable output: aligned tables and key/value blocks.

The renderers take the edited data as the array sent it and tolerate missing fields ("-"), so an
older or newer array still prints something sensible; ``--json`` prints the data untouched.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(n: Any) -> str:
    """1536 -> '1.5 KiB', 16777216 -> '16 MiB'; non-numbers are shown as they are."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return "-" if n is None else str(n)
    value = float(n)
    unit = 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{int(n)} B"
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{text} {_UNITS[unit]}"


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return " ".join(str(value).split())


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell, two spaces apart; ``right`` lists right-aligned columns."""
    right = set(right)
    body = [[cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)]
        return "  ".join(out).rstrip()

    lines = [line(list(headers))]
    lines += [line(row) for row in body]
    return "\n".join(lines)


def keyvalues(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {cell(v)}".rstrip() for k, v in pairs)


def _get(d: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


def when(value: Any) -> str:
    """An epoch time as local 'YYYY-MM-DD HH:MM:SS'; strings (ISO already) as they are."""
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, (int, float)):
        if value <= 0:
            return "-"
        return _dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def duration(seconds: Any) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return cell(seconds)
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h {m}m"
    if h:
        return f"{h}h {m}m {s}s"
    if m:
        return f"{m}m {s}s"
    return f"{seconds:.1f}s" if isinstance(seconds, float) else f"{s}s"


def map_text(m: Any) -> str:
    """A LUN map entry (Fig. 3): 'site-b lun 1 (online)'."""
    if not m:
        return "-"
    if not isinstance(m, dict):
        return cell(m)
    text = f"{_get(m, 'array', default='?')} lun {_get(m, 'lun', default='?')}"
    extra = []
    if m.get("state"):
        extra.append(str(m["state"]))
    if m.get("command_device"):
        extra.append("command device")
    return f"{text} ({', '.join(extra)})" if extra else text


def rtt_text(link: dict[str, Any]) -> str:
    ms = link.get("rtt_ms")
    if not isinstance(ms, (int, float)) or isinstance(ms, bool):
        rtt = link.get("rtt")  # seconds
        if not isinstance(rtt, (int, float)) or isinstance(rtt, bool):
            return cell(rtt)
        ms = rtt * 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


def luns_table(luns: Sequence[dict[str, Any]]) -> str:
    luns = [e for e in luns if isinstance(e, dict)]
    targets = {e.get("target") for e in luns}
    with_target = len(targets) > 1
    headers = (["TARGET"] if with_target else []) + ["LUN", "TYPE", "SIZE", "THIN", "MAP"]
    rows = []
    for e in sorted(luns, key=lambda e: (str(e.get("target", "")), _int(e.get("lun")))):
        row = [e.get("target")] if with_target else []
        row += [e.get("lun"), e.get("type"), human_size(e.get("size")), e.get("thin"), map_text(e.get("map"))]
        rows.append(row)
    off = 1 if with_target else 0
    return table(headers, rows, right=(off, off + 2))


def links_table(links: Sequence[dict[str, Any]]) -> str:
    rows = []
    for ln in links:
        if not isinstance(ln, dict):
            continue
        state = _get(ln, "state")
        if state is None and "connected" in ln:
            state = "up" if ln["connected"] else "down"
        rows.append(
            [
                _get(ln, "peer", "name", "array"),
                state,
                when(_get(ln, "since", "state_since", "changed")),
                rtt_text(ln),
                _get(ln, "reconnects"),
                _get(ln, "last_error", "error"),
            ]
        )
    return table(["PEER", "STATE", "SINCE", "RTT", "RECONNECTS", "LAST ERROR"], rows, right=(3, 4))


def command_devices_table(entries: Sequence[dict[str, Any]]) -> str:
    rows = [[e.get("array"), e.get("target"), e.get("lun")] for e in entries if isinstance(e, dict)]
    return table(["ARRAY", "TARGET", "LUN"], rows, right=(2,))


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 1 << 30


def render_info(data: dict[str, Any], client_version: str | None = None) -> str:
    """ARRAY_INFO for people; ``client_version`` (hostctl's own) follows the array's version."""
    pairs = [
        ("array", _get(data, "array", "name")),
        ("version", data.get("version")),
    ]
    if client_version is not None:
        pairs.append(("hostctl", client_version))
    pairs.append(("uuid", data.get("uuid")))
    if "uptime" in data:
        pairs.append(("uptime", duration(data["uptime"])))
    if "portal" in data:
        pairs.append(("portal", data.get("portal")))
    known = {
        "array",
        "name",
        "version",
        "uuid",
        "uptime",
        "portal",
        "luns",
        "lun_map",
        "command_devices",
        "links",
    }
    pairs += [(k, v) for k, v in data.items() if k not in known and not isinstance(v, (list, dict))]
    parts = [keyvalues(pairs)]
    luns = data.get("luns")
    if isinstance(luns, list):
        parts.append("LUNs\n" + luns_table(luns))
    # The LUN map (Fig. 3) comes from the luns table, which has both sides of each virtual volume
    # (ARRAY_INFO's lun_map entries carry only the peer's target and LUN).
    rows = None
    if isinstance(luns, list):
        rows = [
            [e.get("target"), e.get("lun"), e["map"].get("array"), e["map"].get("lun"), e["map"].get("state")]
            for e in luns
            if isinstance(e, dict) and isinstance(e.get("map"), dict)
        ]
    elif isinstance(data.get("lun_map"), list):
        rows = [
            ["?", "?", e.get("array"), e.get("lun"), e.get("state")]
            for e in data["lun_map"]
            if isinstance(e, dict)
        ]
    if rows is not None:
        parts.append(
            "LUN map\n"
            + (
                table(["TARGET", "LUN", "ARRAY", "REMOTE LUN", "STATE"], rows, right=(1, 3))
                if rows
                else "(no virtual volumes)"
            )
        )
    cds = data.get("command_devices")
    if isinstance(cds, list):
        parts.append("Command devices\n" + command_devices_table(cds))
    links = data.get("links")
    if isinstance(links, list):
        parts.append("Links\n" + (links_table(links) if links else "(no peers)"))
    return "\n\n".join(parts)


def render_raw(resp: dict[str, Any]) -> str:
    pairs = [
        ("array", resp.get("array")),
        (
            "process",
            f"{resp.get('process_name')} ({resp.get('process')})"
            if str(resp.get("process_name")) != str(resp.get("process"))
            else resp.get("process"),
        ),
        ("slot", resp.get("slot")),
        ("state", resp.get("state")),
        ("tag", resp.get("tag")),
        ("status", resp.get("status")),
        ("error", resp.get("error")),
        ("elapsed", f"{resp.get('elapsed_ms', 0):.1f} ms"),
    ]
    text = keyvalues(pairs)
    data = resp.get("data")
    text += "\ndata" + ("  -" if data is None else "\n" + json.dumps(data, indent=2, sort_keys=True))
    return text


# --- remote copy (pairs, journal groups) --------------------------------------------------------


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def percent_text(v: Any) -> str:
    """42 -> '42%', 42.25 -> '42.2%', None -> '-'."""
    x = _num(v)
    if x is None:
        return cell(v)
    return f"{x:.0f}%" if float(x).is_integer() else f"{x:.1f}%"


def pair_copy_percent(pair: dict[str, Any]) -> float | None:
    """A pair's copy progress in percent: ``copy_percent``, else ``copy_done`` (a fraction) * 100."""
    x = _num(pair.get("copy_percent"))
    if x is None:
        done = _num(pair.get("copy_done"))
        x = done * 100 if done is not None else None
    return x


def group_copy_percent(group: dict[str, Any]) -> float | None:
    """The group's copy progress: its own ``copy_percent``, else the mean over its pairs."""
    x = _num(group.get("copy_percent"))
    if x is not None:
        return x
    values = [pair_copy_percent(p) for p in group.get("pairs") or [] if isinstance(p, dict)]
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def vol_text(v: Any, array: str | None) -> str:
    """A volume as ``array:lun``: a LUN number (the array comes from the group's role), an
    ``{"array", "lun"}`` object, or a string that already says ``array:lun``."""
    if isinstance(v, dict):
        array = v.get("array") or array
        v = v.get("lun")
    if v is None or v == "":
        return "-"
    if isinstance(v, str) and ":" in v:
        return v
    return f"{array}:{v}" if array else str(v)


def _sides(group: dict[str, Any], here: str | None) -> tuple[str | None, str | None]:
    """(P-VOL array, S-VOL array) from the group's role, peer and the array that answered."""
    role = str(group.get("role") or "").lower()
    peer = group.get("peer")
    prim, sec = _dict(group.get("primary")), _dict(group.get("secondary"))
    if role == "primary":
        return prim.get("array") or here, sec.get("array") or peer
    if role == "secondary":
        return prim.get("array") or peer, sec.get("array") or here
    return prim.get("array"), sec.get("array")


def journal_percent(journal: Any) -> float | None:
    if not isinstance(journal, dict):
        return None
    used, cap = _num(journal.get("bytes_used")), _num(journal.get("capacity"))
    if used is None or not cap:
        return _num(journal.get("percent"))
    return used / cap * 100


def pair_group_text(group: dict[str, Any], here: str | None = None) -> str:
    """One journal group: a summary row, then one row per pair (indented)."""
    journal, behind = _dict(group.get("journal")), _dict(group.get("behind"))
    jp = journal_percent(journal)
    lag = group.get("lag_seconds")
    head = table(
        [
            "GROUP",
            "ROLE",
            "PEER",
            "STATE",
            "JNL USED",
            "JNL ENTRIES",
            "BEHIND",
            "BEHIND BYTES",
            "LAG",
            "ERROR",
        ],
        [
            [
                group.get("group"),
                group.get("role"),
                group.get("peer"),
                group.get("state"),
                percent_text(jp) if jp is not None else "-",
                journal.get("entries"),
                behind.get("entries"),
                human_size(behind["bytes"]) if behind.get("bytes") is not None else "-",
                duration(lag) if _num(lag) is not None else cell(lag),
                group.get("error"),
            ]
        ],
        right=(4, 5, 6, 7, 8),
    )
    if group.get("svol_consistent") is False and group.get("state") != "COPY":  # (COPY says so itself)
        head += ("\n  S-VOLs inconsistent: a copy did not finish (or its end is not restored yet); "
                 "pairresync makes them consistent, takeover refuses them until then")
    pvol_array, svol_array = _sides(group, here)
    pairs = [p for p in group.get("pairs") or [] if isinstance(p, dict)]
    if not pairs:
        return head + "\n  (no pairs)"
    rows = [
        [
            vol_text(p.get("pvol"), pvol_array),
            vol_text(p.get("svol"), svol_array),
            p.get("state"),
            percent_text(pair_copy_percent(p)),
        ]
        for p in pairs
    ]
    body = table(["P-VOL", "S-VOL", "STATE", "COPY"], rows, right=(3,))
    return head + "\n" + "\n".join("  " + line for line in body.splitlines())


def render_pair_groups(data: dict[str, Any], here: str | None = None) -> str:
    groups = [g for g in data.get("groups") or [] if isinstance(g, dict)]
    if not groups:
        return "(no pair groups)"
    here = data.get("array") or here
    return "\n\n".join(pair_group_text(g, here) for g in groups)


def state_detail(data: dict[str, Any]) -> str:
    """What else pairsplit / pairresync / pairdelete answered, in a few words."""
    parts = []
    if isinstance(data.get("writable"), bool):
        parts.append("S-VOLs writable" if data["writable"] else "S-VOLs read-only")
    if data.get("role"):
        parts.append(f"this array is {data['role']}")
    regions = data.get("regions")
    if isinstance(regions, dict):
        n = sum(v for v in regions.values() if isinstance(v, int) and not isinstance(v, bool))
        parts.append(f"{n} changed region{'s' if n != 1 else ''} to copy")
    if isinstance(data.get("copied_regions"), int):
        parts.append(f"{data['copied_regions']} regions to copy back")
    return ", ".join(parts) or "-"


def group_state_table(rows: Sequence[Sequence[Any]]) -> str:
    """GROUP / ARRAY / STATE / DETAIL: what pairsplit, pairresync, pairdelete leave behind.

    Each row is (group, array, state) or (group, array, state, edited data)."""
    body = []
    for r in rows:
        data = r[3] if len(r) > 3 and isinstance(r[3], dict) else {}
        body.append([r[0], r[1], r[2], state_detail(data)])
    return table(["GROUP", "ARRAY", "STATE", "DETAIL"], body)


def render_takeover(data: dict[str, Any], group: str, array: str, dry_run: bool) -> str:
    """TAKEOVER's answer: the variant chosen (swap / svol-takeover), what is at risk and why."""
    at_risk = data.get("at_risk")
    note = None
    if isinstance(at_risk, dict):
        entries, nbytes, note = at_risk.get("entries"), at_risk.get("bytes"), at_risk.get("note")
    else:
        entries = data.get("at_risk_entries", at_risk)
        nbytes = data.get("at_risk_bytes")
    risk = []
    if entries is not None:
        risk.append(f"{cell(entries)} entries")
    if nbytes is not None:
        risk.append(human_size(nbytes))
    to_restore = data.get("to_restore")
    if isinstance(to_restore, dict):
        to_restore = to_restore.get("entries")
    pairs: list[tuple[str, Any]] = [
        ("group", data.get("group") or group),
        ("array", array),
        ("variant", _get(data, "variant", "kind", "takeover")),
        ("dry run", bool(data.get("dry_run", dry_run))),
    ]
    if "primary_reachable" in data:
        pairs.append(("primary reachable", data["primary_reachable"]))
    pairs.append(("state", data.get("state") if data.get("state") else "(unchanged)" if dry_run else "-"))
    if data.get("role"):
        pairs.append(("role", data["role"]))
    if to_restore is not None:
        pairs.append(("to restore", f"{cell(to_restore)} entries"))
    pairs.append(("data at risk", ", ".join(risk) if risk else "-"))
    if note:
        pairs.append(("", f"({note})"))
    known = {
        "group",
        "variant",
        "kind",
        "takeover",
        "state",
        "role",
        "dry_run",
        "primary_reachable",
        "to_restore",
        "at_risk",
        "at_risk_entries",
        "at_risk_bytes",
    }
    pairs += [(k, v) for k, v in data.items() if k not in known and not isinstance(v, (list, dict))]
    return keyvalues(pairs)


def progress_bar(percent: float | None, width: int = 30) -> str:
    """'[##########--------------------]'"""
    x = 0.0 if percent is None else max(0.0, min(100.0, percent))
    filled = round(x / 100 * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"
