"""Where another array's command device is, read from the local array's ARRAY_INFO (the command
device management table of Fig. 5, its LUNs and links): used by :class:`hostctl.client.Host`, and
pure so the "why unreachable" wording can be tested without devices."""

from __future__ import annotations

from typing import Any

from .errors import ProtocolError, UnreachableError, UsageError


def _find_command_device(info: dict[str, Any], name: str, via: str) -> dict[str, Any]:
    table = info.get("command_devices")
    if not isinstance(table, list):
        raise ProtocolError(f"{via}: ARRAY_INFO has no command device table")
    for e in table:
        if isinstance(e, dict) and e.get("array") == name:
            if not isinstance(e.get("lun"), int) or isinstance(e.get("lun"), bool):
                raise ProtocolError(f"{via}: command device entry for {name} has no LUN number")
            return e
    # Not in the table: if the local array has a link (or virtual volumes) to that array which is not
    # up, its command device is simply not attached yet -- say that, not "configure it".
    links = [ln for ln in info.get("links") or [] if isinstance(ln, dict) and ln.get("peer") == name]
    mapped = [
        e
        for e in info.get("luns") or []
        if isinstance(e, dict) and isinstance(e.get("map"), dict) and e["map"].get("array") == name
    ]
    down = [ln for ln in links if str(ln.get("state", "")).lower() not in ("up", "connected", "online")]
    if down or (
        mapped and not links and all(str(e["map"].get("state")) in ("offline", "down") for e in mapped)
    ):
        why = ""
        if down and down[0].get("last_error"):
            why = f" (last error: {' '.join(str(down[0]['last_error']).split())})"
        state = f"is {down[0].get('state')}" if down and down[0].get("state") else "is not up"
        raise UnreachableError(f"{name}: unreachable: the link from {via} to {name} {state}{why}")
    known = ", ".join(str(e.get("array")) for e in table if isinstance(e, dict)) or "none"
    raise UsageError(
        f"{via} has no command device for {name} in its command device table "
        f"(registered: {known}); map {name}'s command device as a virtual volume on {via}"
    )


def _naa_of(info: dict[str, Any], lun: int, target: str | None) -> str:
    for e in info.get("luns") or []:
        if not isinstance(e, dict) or e.get("lun") != lun:
            continue
        if target and e.get("target") and e.get("target") != target:
            continue
        naa = str(e.get("naa") or "").lower()
        for prefix in ("naa.", "0x"):
            if naa.startswith(prefix):
                naa = naa[len(prefix) :]
        return naa
    return ""
