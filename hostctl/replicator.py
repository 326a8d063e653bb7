"""The host's side of the journal copy loop (Fig. 16): :class:`Replicator` runs one round against
two arrays; :func:`round_text` is a round's one-line summary. ``hostctl replicate`` (in
:mod:`hostctl.pairs`) drives it; tests and tools use it directly."""

from __future__ import annotations

from typing import Any

from .client import CommandDeviceClient, Process
from .errors import ProtocolError
from .pair_ctx import _data, _int
from .render import cell, duration


class Replicator:
    """One journal group's copy loop, run from the host (the arrays also run it by themselves).

    One :meth:`round`::

        JOURNAL_STATUS  primary                      -> journal_in
        JOURNAL_ACQUIRE secondary {group, upto: journal_in}
        JOURNAL_STATUS  secondary                    -> read_completed, to_be_read, read_seq
        if read_completed == to_be_read (everything asked for is read and durable):
            JOURNAL_RESTORE secondary {group, upto: read_completed}
            JOURNAL_PURGE   primary   {group, upto_pos: read_completed, upto_seq: read_seq}
    """

    def __init__(
        self, primary: CommandDeviceClient, secondary: CommandDeviceClient, group: str, timeout: float
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self.group = group
        self.timeout = timeout
        self.rounds = 0
        self._read_seq: int | None = None  # read_seq after the previous round
        self._restored_seq: int | None = None  # read_seq at the previous restore

    async def _run(
        self, client: CommandDeviceClient, process: Process, params: dict[str, Any]
    ) -> dict[str, Any]:
        return _data(await client.run(process, params, timeout=self.timeout))

    async def round(self) -> dict[str, Any]:
        g = self.group
        self.rounds += 1
        pst = await self._run(self.primary, Process.JOURNAL_STATUS, {"group": g})
        if "journal_in" not in pst:
            raise ProtocolError(f"{self.primary.where}: JOURNAL_STATUS of {g} has no journal_in")
        # up to what the primary has made durable (older arrays report journal_in only)
        acq = await self._run(
            self.secondary, Process.JOURNAL_ACQUIRE, {"group": g, "upto": pst.get("durable_in", pst["journal_in"])}
        )
        sst = await self._run(self.secondary, Process.JOURNAL_STATUS, {"group": g})
        read_completed, to_be_read = sst.get("read_completed"), sst.get("to_be_read")
        read_seq = _int(sst.get("read_seq"))
        rst = pur = None
        complete = read_completed is not None and read_completed == to_be_read
        copying = str(sst.get("state") or "").upper() == "COPY"
        if complete and not copying:
            rst = await self._run(
                self.secondary, Process.JOURNAL_RESTORE, {"group": g, "upto": read_completed}
            )
        # the primary may free only what is restored here: the secondary ring mirrors its positions
        purge_pos = rst.get("restoration_completed") if rst is not None else None
        purge_seq = _int(rst.get("restored_seq")) if rst is not None else None
        if purge_pos is not None and purge_seq is not None:
            pur = await self._run(
                self.primary,
                Process.JOURNAL_PURGE,
                {"group": g, "upto_pos": purge_pos, "upto_seq": purge_seq},
            )
        acquired = _int(acq.get("acquired"))
        if acquired is None and read_seq is not None and self._read_seq is not None:
            acquired = read_seq - self._read_seq
        restored = _int(rst.get("restored")) if rst is not None else 0
        if rst is not None and restored is None and read_seq is not None and self._restored_seq is not None:
            restored = read_seq - self._restored_seq
        if read_seq is not None:
            self._read_seq = read_seq
            if rst is not None:
                self._restored_seq = read_seq
        lag = None
        for d in (sst, rst or {}, acq, pst):
            if d.get("lag_seconds") is not None:
                lag = d["lag_seconds"]
                break
        return {
            "round": self.rounds,
            "group": g,
            "primary": pst,
            "acquire": acq,
            "secondary": sst,
            "restore": rst,
            "purge": pur,
            "complete": complete,
            "copying": copying,
            "acquired": acquired,
            "restored": restored,
            "purged_to_seq": purge_seq if pur is not None else None,
            "lag_seconds": lag,
        }


def round_text(r: dict[str, Any]) -> str:
    parts = [f"round {r['round']}", f"acquired {cell(r.get('acquired'))}"]
    if r.get("complete"):
        if r.get("copying"):
            parts.append("restore waits (initial copy running)")
        else:
            parts.append(f"restored {cell(r.get('restored'))}")
        if r.get("purge") is not None:
            parts.append(f"purged to seq {cell(r.get('purged_to_seq'))}")
    else:
        sst = r.get("secondary") or {}
        parts.append(
            f"restore waits (read-completed {cell(sst.get('read_completed'))}, "
            f"to-be-read {cell(sst.get('to_be_read'))})"
        )
    lag = r.get("lag_seconds")
    parts.append(
        f"lag {duration(lag) if isinstance(lag, (int, float)) and not isinstance(lag, bool) else cell(lag)}"
    )
    return "  ".join(parts)
