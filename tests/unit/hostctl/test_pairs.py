"""The remote-copy commands (paircreate ... takeover) against fake pair handlers on two arrays.

site-a is the local array (/dev/sdb), site-b is reached through site-a's LUN 3 (/dev/sdc); both are
real CommandDeviceStores whose dispatchers carry fake replication handlers that record every call
as (array, process, params) in one shared list, in order.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hostctl import pairs
from hostctl.__main__ import main, main_async
from hostctl.client import Process, parse_process, process_name
from hostctl.pairs import Progress
from storaged.cmddev.block import ResultStatus
from storaged.cmddev.dispatch import CommandDispatcher, CommandError
from storaged.cmddev.store import CommandDeviceStore

from .conftest import HOST, StoreIO, make_dispatcher, make_store, site_info

Handler = Callable[[dict[str, Any]], dict[str, Any]]

#: process number -> the name storaged's dispatcher registers it under (storaged/repl/commands.py)
NAMES = {int(p): p.name for p in Process if 16 <= p <= 26}


def group_entry(state: str = "PAIR", copy: float = 100, role: str = "secondary", **kw: Any) -> dict[str, Any]:
    g = {
        "group": "g1",
        "role": role,
        "peer": "site-a" if role == "secondary" else "site-b",
        "state": state,
        "pairs": [{"pvol": 0, "svol": 0, "state": state, "copy_percent": copy}],
        "journal": {"bytes_used": 1 << 20, "capacity": 8 << 20, "entries": 40},
        "behind": {"entries": 12, "bytes": 3 << 19},
        "lag_seconds": 0.8,
        "error": None,
    }
    g.update(kw)
    return g


class FakeArray:
    """One array's replication handlers; ``handlers[process]`` may be replaced per test."""

    def __init__(self, name: str, calls: list[tuple[str, int, dict[str, Any]]]) -> None:
        self.name = name
        self.calls = calls
        self.display: list[dict[str, Any]] = []  # PAIR_DISPLAY answers, one per call (the last repeats)
        self.handlers: dict[int, Handler] = {
            16: lambda p: {"group": p["group"], "state": "COPY"},
            17: self._display,
            18: lambda p: {"group": p["group"], "state": "PSUS"},
            19: lambda p: {"group": p["group"], "state": "COPY"},
            20: lambda p: {"group": p["group"], "state": "SMPL"},
            21: lambda p: {"journal_in": 4096, "next_seq": 43},
            22: lambda p: {"read_completed": p["upto"], "to_be_read": p["upto"]},
            # like the array: the secondary's pointers after the restore (restored up to "upto")
            23: lambda p: {"restored": 5, "restoration_completed": p["upto"], "restored_seq": 43},
            24: lambda p: {"journal_out": p["upto_pos"], "out_seq": p["upto_seq"]},
            25: lambda p: {"result": "DONE"},
            26: lambda p: {
                "group": p["group"],
                "variant": "swap",
                "state": "PAIR",
                "at_risk": {"entries": 0, "bytes": 0},
            },
        }

    def _display(self, p: dict[str, Any]) -> dict[str, Any]:
        if not self.display:
            return {"groups": [group_entry()]}
        answer = self.display.pop(0) if len(self.display) > 1 else self.display[0]
        return answer

    def dispatcher(self) -> CommandDispatcher:
        d = make_dispatcher(site_info(self.name))
        for number, name in NAMES.items():
            d.register(number, name, self._handler(number))
        return d

    def _handler(self, number: int) -> Callable[[dict[str, Any], str], dict[str, Any]]:
        def run(params: dict[str, Any], origin: str) -> dict[str, Any]:
            self.calls.append((self.name, number, dict(params)))
            return self.handlers[number](params)

        return run


class Lab:
    def __init__(self, tmp_path: Path) -> None:
        self.calls: list[tuple[str, int, dict[str, Any]]] = []
        self.a = FakeArray("site-a", self.calls)
        self.b = FakeArray("site-b", self.calls)
        self.stores: dict[str, CommandDeviceStore] = {
            "site-a": make_store(self.a.dispatcher()),
            "site-b": make_store(self.b.dispatcher()),
        }
        self.opened: list[str] = []
        cfg = {
            "initiator": HOST,
            "arrays": ["site-a", "site-b"],
            "local": {"array": "site-a", "command_device": "/dev/sdb", "devices": {3: "/dev/sdc"}},
            "timeout": 5,
        }
        self.config = str(tmp_path / "host.yaml")
        Path(self.config).write_text(yaml.safe_dump(cfg))

    def device(self, path: str) -> StoreIO:
        self.opened.append(path)
        return StoreIO(self.stores["site-a" if path == "/dev/sdb" else "site-b"], HOST, name=path)

    def pair_calls(self) -> list[tuple[str, int, dict[str, Any]]]:
        return [c for c in self.calls if c[1] >= 16]

    async def cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = await main_async(["--config", self.config, *argv], stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    lab = Lab(tmp_path)

    async def open_device(spec: str, **kw: Any) -> StoreIO:
        return lab.device(spec)

    monkeypatch.setattr("hostctl.client.open_device", open_device)
    monkeypatch.setattr("hostctl.client.BlockDevice", lab.device)
    monkeypatch.setattr(pairs, "POLL_INTERVAL", 0.01)
    yield lab
    for s in lab.stores.values():
        s.close()


# --- process numbers -------------------------------------------------------------------------


def test_process_numbers() -> None:
    assert list(NAMES) == list(range(16, 27))
    assert [Process[n] for n in NAMES.values()] == list(NAMES)
    assert parse_process("PAIR_CREATE") == 16 and parse_process("pair-syncwait") == 25
    assert parse_process("takeover") == 26 and process_name(21) == "JOURNAL_STATUS"


# --- paircreate ----------------------------------------------------------------------------------


CREATE = ["paircreate", "-g", "g1", "--pvol", "site-a:0", "--svol", "site-b:2", "--pjnl", "1", "--sjnl", "5"]


async def test_paircreate_goes_to_the_svol_array(lab: Lab) -> None:
    rc, out, err = await lab.cli(*CREATE)
    assert rc == 0, err
    assert lab.pair_calls() == [
        ("site-b", 16, {"group": "g1", "peer": "site-a", "pvol": 0, "svol": 2, "pjnl": 1, "sjnl": 5})
    ]
    assert lab.opened == ["/dev/sdb", "/dev/sdc"]  # routed through site-a's LUN 3
    assert out.splitlines() == [
        "GROUP  P-VOL     S-VOL     P-JNL     S-JNL     STATE",
        "g1     site-a:0  site-b:2  site-a:1  site-b:5  COPY",
    ]
    assert err == ""


async def test_paircreate_svol_on_the_local_array(lab: Lab) -> None:
    rc, out, err = await lab.cli(
        "--json",
        "paircreate",
        "-g",
        "g2",
        "--pvol",
        "site-b:4",
        "--svol",
        "site-a:0",
        "--pjnl",
        "7",
        "--sjnl",
        "1",
    )
    assert rc == 0, err
    assert json.loads(out) == {"group": "g2", "state": "COPY"}
    assert lab.pair_calls() == [
        ("site-a", 16, {"group": "g2", "peer": "site-b", "pvol": 4, "svol": 0, "pjnl": 7, "sjnl": 1})
    ]
    assert lab.opened == ["/dev/sdb"]


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--pvol", "site-a", "--svol", "site-b:0", "--pjnl", "1", "--sjnl", "5"], "expected ARRAY:LUN"),
        (["--pvol", "site-a:x", "--svol", "site-b:0", "--pjnl", "1", "--sjnl", "5"], "expected a LUN number"),
        (
            ["--pvol", "site-a:0", "--svol", "site-a:1", "--pjnl", "1", "--sjnl", "5"],
            "remote copy needs two arrays",
        ),
        (["--pvol", "site-a:0", "--svol", "site-b:0", "--pjnl", "1"], "required: --sjnl"),
        (["--pvol", "site-a:0", "--svol", "site-b:0", "--pjnl", "1", "--sjnl", "99999"], "LUN numbers are"),
        (
            ["--pvol", "site-a:0", "--svol", "site-b:0", "--pjnl", "1", "--sjnl", "5", "--array", "site-a"],
            "runs on the S-VOL's array (site-b)",
        ),
    ],
)
async def test_paircreate_usage_errors(lab: Lab, argv: list[str], words: str) -> None:
    rc, out, err = await lab.cli("paircreate", "-g", "g1", *argv)
    assert rc == 2 and words in err and err.count("\n") == 1, err
    assert lab.opened == [] and out == ""


async def test_paircreate_wait_until_pair_with_progress_lines(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pairs, "PROGRESS_LINE_EVERY", 0.0)
    lab.b.display = [
        {"groups": [group_entry("COPY", 0)]},
        {"groups": [group_entry("COPY", 50)]},
        {"groups": [group_entry("COPY", 50)]},
        {"groups": [group_entry("PAIR", 100)]},
    ]
    rc, out, err = await lab.cli(*CREATE, "--wait")
    assert rc == 0, err
    assert err.splitlines() == [
        "paircreate g1: COPY 0%",
        "paircreate g1: COPY 50%",
        "paircreate g1: PAIR 100%",
    ]
    displays = [c for c in lab.pair_calls() if c[1] == 17]
    assert len(displays) == 4 and all(c[0] == "site-b" and c[2] == {"group": "g1"} for c in displays)
    assert "COPY" in out.splitlines()[1]  # the create table first, then the final group
    assert "site-a:0  site-b:0  PAIR   100%" in out


async def test_paircreate_wait_json_and_no_progress(lab: Lab) -> None:
    lab.b.display = [{"groups": [group_entry("COPY", 10)]}, {"groups": [group_entry("PAIR", 100)]}]
    rc, out, err = await lab.cli("--json", *CREATE, "--wait", "--no-progress")
    assert rc == 0 and err == ""
    assert json.loads(out) == group_entry("PAIR", 100)


async def test_paircreate_wait_psue_exits_1_with_the_reason(lab: Lab) -> None:
    lab.b.display = [
        {"groups": [group_entry("COPY", 20)]},
        {"groups": [group_entry("PSUE", 35, error="journal full (policy suspend)")]},
    ]
    rc, _out, err = await lab.cli(*CREATE, "--wait")
    assert rc == 1
    assert err.splitlines()[-1] == "hostctl: site-b: group g1 is PSUE: journal full (policy suspend)"


async def test_paircreate_wait_group_gone_is_smpl(lab: Lab) -> None:
    lab.b.display = [{"groups": []}]
    rc, _out, err = await lab.cli(*CREATE, "--wait", "--no-progress")
    assert rc == 1 and err == "hostctl: site-b: group g1 is SMPL: it no longer exists there\n"


async def test_paircreate_wait_timeout_exits_4(lab: Lab) -> None:
    lab.b.display = [{"groups": [group_entry("COPY", 12.5)]}]
    rc, _out, err = await lab.cli("--timeout", "0.3", *CREATE, "--wait", "--no-progress")
    assert rc == 4
    assert err == "hostctl: site-b: group g1 did not reach PAIR within 0.3s (still COPY, 12.5% copied)\n"


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_lines_without_a_tty() -> None:
    s, clock = io.StringIO(), FakeClock()
    p = Progress(s, "g1", tty=False, every=5.0, clock=clock)
    p.update("COPY", 0)
    clock.t = 1
    p.update("COPY", 10)  # too soon: no line
    clock.t = 5
    p.update("COPY", 10)  # 5 s since the last line and the percentage moved
    clock.t = 6
    p.update("COPY", 20)  # too soon
    clock.t = 20
    p.update("COPY", 20.5)
    clock.t = 26
    p.update("COPY", 20.5)  # unchanged: no line however long
    clock.t = 27
    p.update("PAIR", 100)  # a state change always prints
    p.close()
    assert s.getvalue().splitlines() == [
        "paircreate g1: COPY 0%",
        "paircreate g1: COPY 10%",
        "paircreate g1: COPY 20.5%",
        "paircreate g1: PAIR 100%",
    ]


def test_progress_bar_on_a_tty() -> None:
    s = io.StringIO()
    p = Progress(s, "g1", tty=True)
    p.update("COPY", 50)
    p.update("PAIR", 100)
    p.close()
    text = s.getvalue()
    frames = text.split("\r")[1:]
    assert frames[0] == "g1  COPY  [" + "#" * 15 + "-" * 15 + "]     50%"
    assert frames[1] == "g1  PAIR  [" + "#" * 30 + "]    100%\n"
    assert "\n" not in frames[0]


def test_progress_disabled_prints_nothing() -> None:
    s = io.StringIO()
    p = Progress(s, "g1", tty=True, enabled=False)
    p.update("COPY", 1)
    p.close()
    assert s.getvalue() == ""


class TtyStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_paircreate_draws_a_bar_on_a_tty_but_not_with_json(lab: Lab) -> None:
    lab.b.display = [{"groups": [group_entry("COPY", 50)]}, {"groups": [group_entry("PAIR", 100)]}]
    out, err = io.StringIO(), TtyStringIO()
    assert await main_async(["--config", lab.config, *CREATE, "--wait"], stdout=out, stderr=err) == 0
    assert err.getvalue().startswith("\rg1  COPY  [") and err.getvalue().endswith("100%\n")
    out, err = io.StringIO(), TtyStringIO()
    assert (
        await main_async(["--config", lab.config, "--json", *CREATE, "--wait"], stdout=out, stderr=err) == 0
    )
    assert "\r" not in err.getvalue() and "paircreate g1: PAIR 100%" in err.getvalue()


# --- pairdisplay ---------------------------------------------------------------------------------


async def test_pairdisplay_table(lab: Lab) -> None:
    g2 = {
        "group": "g2",
        "state": "PSUE",
        "role": "primary",
        "peer": "site-b",
        "error": "link down",
        "pairs": [{"pvol": 1, "svol": 3, "state": "PSUE", "copy_done": 0.5}],
    }
    lab.a.display = [{"groups": [group_entry("PAIR", 100, role="primary"), g2]}]
    rc, out, err = await lab.cli("pairdisplay")
    assert rc == 0, err
    assert lab.pair_calls() == [("site-a", 17, {})]
    assert out == (
        "GROUP  ROLE     PEER    STATE  JNL USED  JNL ENTRIES  BEHIND  BEHIND BYTES   LAG  ERROR\n"
        "g1     primary  site-b  PAIR      12.5%           40      12       1.5 MiB  0.8s  -\n"
        "  P-VOL     S-VOL     STATE  COPY\n"
        "  site-a:0  site-b:0  PAIR   100%\n"
        "\n"
        "GROUP  ROLE     PEER    STATE  JNL USED  JNL ENTRIES  BEHIND  BEHIND BYTES  LAG  ERROR\n"
        "g2     primary  site-b  PSUE          -            -       -             -    -  link down\n"
        "  P-VOL     S-VOL     STATE  COPY\n"
        "  site-a:1  site-b:3  PSUE    50%\n"
    )


async def test_pairdisplay_group_on_another_array_and_json(lab: Lab) -> None:
    data = {"groups": [group_entry("COPY", 42)]}
    lab.b.display = [data]
    rc, out, err = await lab.cli("pairdisplay", "-g", "g1", "--array", "site-b")
    assert rc == 0, err
    assert lab.pair_calls() == [("site-b", 17, {"group": "g1"})]
    assert "g1     secondary  site-a  COPY" in out and "  site-a:0  site-b:0  COPY    42%" in out
    rc, out, err = await lab.cli("--json", "pairdisplay", "--array", "site-b")
    assert rc == 0 and json.loads(out) == data


async def test_pairdisplay_tolerates_missing_keys(lab: Lab) -> None:
    lab.a.display = [{"groups": [{"group": "g9"}, "junk"]}]
    rc, out, err = await lab.cli("pairdisplay")
    assert rc == 0, err
    assert out.splitlines()[1].split() == ["g9"] + ["-"] * 9
    assert out.splitlines()[2] == "  (no pairs)"
    lab.a.display = [{"groups": []}]
    rc, out, _ = await lab.cli("pairdisplay")
    assert out == "(no pair groups)\n"
    rc, out, _ = await lab.cli("pairdisplay", "-g", "g1")
    assert out == "(no group g1 on site-a: SMPL)\n"


# --- pairsplit, pairresync, pairdelete -----------------------------------------------------------


async def test_pairsplit_local_by_default(lab: Lab) -> None:
    rc, out, err = await lab.cli("pairsplit", "-g", "g1")
    assert rc == 0, err
    assert lab.pair_calls() == [("site-a", 18, {"group": "g1", "rw": False})]
    assert out.splitlines() == ["GROUP  ARRAY   STATE  DETAIL", "g1     site-a  PSUS   -"]
    rc, out, err = await lab.cli("--json", "pairsplit", "-g", "g1", "--rw", "--array", "site-b")
    assert rc == 0 and json.loads(out) == {"group": "g1", "state": "PSUS"}
    assert lab.pair_calls()[-1] == ("site-b", 18, {"group": "g1", "rw": True})


async def test_pairresync_needs_the_svol_array(lab: Lab) -> None:
    rc, _out, err = await lab.cli("pairresync", "-g", "g1")
    assert rc == 2 and "name it with --array NAME" in err and lab.opened == []
    rc, out, err = await lab.cli("pairresync", "-g", "g1", "--array", "site-b", "--force")
    assert rc == 0, err
    assert lab.pair_calls() == [("site-b", 19, {"group": "g1", "force": True})]
    assert out.splitlines()[1].split() == ["g1", "site-b", "COPY", "-"]


async def test_pairresync_swap_and_details(lab: Lab) -> None:
    lab.b.handlers[19] = lambda p: {"group": "g1", "state": "COPY", "role": "primary", "copied_regions": 4}
    rc, out, err = await lab.cli("pairresync", "-g", "g1", "--array", "site-b", "--swap")
    assert rc == 0, err
    assert lab.pair_calls() == [("site-b", 19, {"group": "g1", "force": False, "swap": True})]
    assert out.splitlines()[1] == "g1     site-b  COPY   this array is primary, 4 regions to copy back"
    lab.b.handlers[19] = lambda p: {"group": "g1", "state": "COPY", "regions": {"0": 3, "1": 0}}
    rc, out, err = await lab.cli("pairresync", "-g", "g1", "--array", "site-b")
    assert out.splitlines()[1] == "g1     site-b  COPY   3 changed regions to copy"
    lab.b.handlers[18] = lambda p: {"group": "g1", "state": "PSUS", "writable": p["rw"]}
    rc, out, err = await lab.cli("pairsplit", "-g", "g1", "--array", "site-b", "--rw")
    assert out.splitlines()[1] == "g1     site-b  PSUS   S-VOLs writable"


async def test_pairdelete(lab: Lab) -> None:
    rc, out, err = await lab.cli("pairdelete", "-g", "g1", "--array", "site-b")
    assert rc == 0, err
    assert lab.pair_calls() == [("site-b", 20, {"group": "g1"})]
    assert out.splitlines()[1].split() == ["g1", "site-b", "SMPL", "-"]


async def test_wrong_state_prints_the_arrays_text_and_exits_1(lab: Lab) -> None:
    def refuse(p: dict[str, Any]) -> dict[str, Any]:
        raise CommandError(ResultStatus.WRONG_STATE, "group g1 is in PSUS; pairsplit needs PAIR or COPY")

    lab.b.handlers[18] = refuse
    rc, out, err = await lab.cli("pairsplit", "-g", "g1", "--array", "site-b")
    assert rc == 1 and out == ""
    # the dispatcher sends "PAIR_SPLIT: group g1 ..."; the command's own name is not repeated
    assert err == "hostctl: site-b: WRONG_STATE: group g1 is in PSUS; pairsplit needs PAIR or COPY\n"


async def test_raw_keeps_the_arrays_text_as_it_is(lab: Lab) -> None:
    def refuse(p: dict[str, Any]) -> dict[str, Any]:
        raise CommandError(ResultStatus.WRONG_STATE, "group g1 is in PSUS; pairsplit needs PAIR or COPY")

    lab.a.handlers[18] = refuse
    rc, out, err = await lab.cli("raw", "PAIR_SPLIT", "-p", "group=g1")
    assert rc == 1 and "error    PAIR_SPLIT: group g1 is in PSUS" in out
    assert (
        err == "hostctl: site-a: WRONG_STATE: PAIR_SPLIT: group g1 is in PSUS; pairsplit needs PAIR or COPY\n"
    )


# --- replicate (Fig. 16) -------------------------------------------------------------------------

REPLICATE = ["replicate", "-g", "g1", "--primary", "site-a", "--secondary", "site-b"]


def secondary_status(read_completed: int, to_be_read: int, read_seq: int, **kw: Any) -> Handler:
    return lambda p: {"read_completed": read_completed, "to_be_read": to_be_read, "read_seq": read_seq, **kw}


async def test_replicate_once_runs_the_loop_in_order(lab: Lab) -> None:
    lab.a.handlers[21] = lambda p: {"journal_in": 8192, "journal_out": 1024, "next_seq": 43}
    lab.b.handlers[22] = lambda p: {"acquired": 12}
    lab.b.handlers[21] = secondary_status(8192, 8192, 43, lag_seconds=0.4)
    rc, out, err = await lab.cli(*REPLICATE, "--once")
    assert rc == 0, err
    assert lab.pair_calls() == [
        ("site-a", 21, {"group": "g1"}),
        ("site-b", 22, {"group": "g1", "upto": 8192}),
        ("site-b", 21, {"group": "g1"}),
        ("site-b", 23, {"group": "g1", "upto": 8192}),
        ("site-a", 24, {"group": "g1", "upto_pos": 8192, "upto_seq": 43}),
    ]
    assert out == "round 1  acquired 12  restored 5  purged to seq 43  lag 0.4s\n"


async def test_replicate_once_waits_to_restore_until_the_read_is_complete(lab: Lab) -> None:
    lab.b.handlers[22] = lambda p: {}
    lab.b.handlers[21] = secondary_status(2048, 4096, 7)
    rc, out, err = await lab.cli(*REPLICATE, "--once")
    assert rc == 0, err
    assert [(a, n) for a, n, _ in lab.pair_calls()] == [("site-a", 21), ("site-b", 22), ("site-b", 21)]
    assert out == "round 1  acquired -  restore waits (read-completed 2048, to-be-read 4096)  lag -\n"


async def test_replicate_once_during_the_initial_copy_neither_restores_nor_purges(lab: Lab) -> None:
    # entries acquired during a copy wait unrestored; the primary must not reuse their ring positions
    lab.b.handlers[22] = lambda p: {"acquired": 2}
    lab.b.handlers[21] = secondary_status(4096, 4096, 9, state="COPY", lag_seconds=1.5)
    rc, out, err = await lab.cli(*REPLICATE, "--once")
    assert rc == 0, err
    assert [(a, n) for a, n, _ in lab.pair_calls()] == [
        ("site-a", 21),
        ("site-b", 22),
        ("site-b", 21),
    ]
    assert out == "round 1  acquired 2  restore waits (initial copy running)  lag 1.5s\n"


async def test_replicate_json_lines(lab: Lab) -> None:
    lab.b.handlers[21] = secondary_status(4096, 4096, 43)
    rc, out, err = await lab.cli("--json", *REPLICATE, "--once")
    assert rc == 0, err
    (line,) = out.splitlines()
    r = json.loads(line)
    assert r["round"] == 1 and r["group"] == "g1" and r["complete"] is True
    assert r["primary"] == {"journal_in": 4096, "next_seq": 43} and r["restored"] == 5
    assert r["purge"] == {"journal_out": 4096, "out_seq": 43} and r["purged_to_seq"] == 43


async def test_replicate_follow_until_ctrl_c(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    seqs = iter([10, 15, 15, 22])
    lab.b.handlers[21] = lambda p: {"read_completed": 1, "to_be_read": 1, "read_seq": next(seqs)}
    lab.b.handlers[22] = lambda p: {}
    lab.b.handlers[23] = lambda p: {}
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(pairs, "sleep", sleep)
    rc, out, err = await lab.cli(*REPLICATE, "--follow", "--interval", "0.25")
    assert rc == 0, err
    assert slept == [0.25] * 4
    # counts from the secondary's read_seq between rounds when the array sends no counts
    assert [line.split("  ")[:3] for line in out.splitlines()] == [
        ["round 1", "acquired -", "restored -"],
        ["round 2", "acquired 5", "restored 5"],
        ["round 3", "acquired 0", "restored 0"],
        ["round 4", "acquired 7", "restored 7"],
    ]
    assert err == "hostctl: replicate g1: stopped after 4 round(s)\n"


async def test_replicate_follow_cancelled_exits_0(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio.run turns Ctrl-C into cancelling the main task."""
    lab.b.handlers[21] = secondary_status(1, 1, 1)
    task = asyncio.ensure_future(lab.cli(*REPLICATE, "--follow", "--interval", "0.01"))
    while sum(1 for c in lab.calls if c[1] == 24) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    rc, out, err = await task
    assert rc == 0 and out.count("round ") >= 3 and "stopped after" in err


def test_replicate_follow_sigint_through_main(lab: Lab) -> None:
    """The real thing: main() under asyncio.run, SIGINT from another thread."""
    lab.b.handlers[21] = secondary_status(1, 1, 1)
    out, err = io.StringIO(), io.StringIO()
    # Ctrl-C as in a shell's foreground job: a suite started as a background job of a
    # non-interactive shell inherits SIGINT ignored, and asyncio.run then leaves it ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    # a first interrupt that did not stop it: the second makes asyncio.run raise KeyboardInterrupt
    # (exit 130), so the test fails with that instead of hanging the suite
    again = threading.Timer(20.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    again.start()
    try:
        rc = main(
            ["--config", lab.config, *REPLICATE, "--follow", "--interval", "0.05"], stdout=out, stderr=err
        )
    finally:
        timer.cancel()
        again.cancel()
        signal.signal(signal.SIGINT, previous)
    assert rc == 0, f"exit {rc} (130: the first SIGINT did not stop it): {err.getvalue()}"

    assert out.getvalue().startswith("round 1  ") and "stopped after" in err.getvalue()


async def test_replicate_error_stops_with_its_exit_code(lab: Lab) -> None:
    def unreachable(p: dict[str, Any]) -> dict[str, Any]:
        raise CommandError(ResultStatus.UNREACHABLE, "primary site-a is not reachable")

    lab.b.handlers[22] = unreachable
    rc, _out, err = await lab.cli(*REPLICATE, "--follow")
    assert rc == 3 and err == "hostctl: site-b: UNREACHABLE: primary site-a is not reachable\n"


async def test_replicate_usage(lab: Lab) -> None:
    rc, _o, err = await lab.cli("replicate", "-g", "g1", "--primary", "site-a", "--secondary", "site-b")
    assert rc == 2 and "one of the arguments --once --follow is required" in err
    rc, _o, err = await lab.cli(
        "replicate", "-g", "g1", "--primary", "site-a", "--secondary", "site-a", "--once"
    )
    assert rc == 2 and "both site-a" in err and lab.opened == []


# --- pairsyncwait, takeover ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "result,code,words",
    [
        ("DONE", 0, ""),
        ("TIMEOUT", 4, "hostctl: site-b: group g1: TIMEOUT: sequence 7 not restored within 2s\n"),
        (
            "BROKEN",
            1,
            "hostctl: site-b: group g1: BROKEN: the group is suspended or gone (see pairdisplay)\n",
        ),
    ],
)
async def test_pairsyncwait_results(lab: Lab, result: str, code: int, words: str) -> None:
    lab.b.handlers[25] = lambda p: {"result": result, "seq": p["seq"], "restored_seq": 5}
    rc, out, err = await lab.cli(
        "pairsyncwait", "-g", "g1", "--seq", "7", "--wait-timeout", "2", "--array", "site-b"
    )
    assert rc == code and err == words
    assert lab.pair_calls() == [("site-b", 25, {"group": "g1", "seq": 7, "timeout": 2.0})]
    assert out.splitlines() == [
        "GROUP  ARRAY   SEQ  RESTORED  RESULT",
        f"g1     site-b    7         5  {result}",
    ]


async def test_pairsyncwait_without_seq_lets_the_array_ask_the_primary(lab: Lab) -> None:
    lab.a.handlers[25] = lambda p: {"result": "DONE", "seq": 1233, "restored_seq": 1240}
    rc, out, err = await lab.cli("--json", "--timeout", "3", "pairsyncwait", "-g", "g1")
    assert rc == 0, err
    assert json.loads(out) == {"result": "DONE", "seq": 1233, "restored_seq": 1240}
    assert lab.pair_calls() == [("site-a", 25, {"group": "g1", "timeout": 3.0})]


async def test_pairsyncwait_timeout_without_seq(lab: Lab) -> None:
    lab.a.handlers[25] = lambda p: {"result": "TIMEOUT", "seq": None, "restored_seq": 9}
    rc, out, err = await lab.cli("pairsyncwait", "-g", "g1", "--wait-timeout", "0.5")
    assert rc == 4
    newest = "the primary's newest sequence number"
    assert err == f"hostctl: site-a: group g1: TIMEOUT: {newest} not restored within 0.5s\n"
    assert lab.pair_calls() == [("site-a", 25, {"group": "g1", "timeout": 0.5})]


def takeover_answer(p: dict[str, Any]) -> dict[str, Any]:
    """What storaged's Replication.takeover answers when the primary is unreachable."""
    plan = {
        "group": p["group"],
        "variant": "svol-takeover",
        "primary_reachable": False,
        "to_restore": {"entries": 3},
        "at_risk": {"entries": 12, "known_as_of_ns": 1764115200000000000, "note": "never acquired"},
    }
    return plan if p["dry_run"] else {**plan, "state": "SSWS", "role": "secondary"}


async def test_takeover(lab: Lab) -> None:
    lab.a.handlers[26] = takeover_answer
    rc, out, err = await lab.cli("takeover", "-g", "g1", "--dry-run")
    assert rc == 0, err
    assert lab.pair_calls() == [("site-a", 26, {"group": "g1", "dry_run": True})]
    assert out.splitlines() == [
        "group              g1",
        "array              site-a",
        "variant            svol-takeover",
        "dry run            yes",
        "primary reachable  no",
        "state              (unchanged)",
        "to restore         3 entries",
        "data at risk       12 entries",
        "                   (never acquired)",
    ]
    rc, out, err = await lab.cli("takeover", "-g", "g1")
    assert rc == 0, err
    assert "state              SSWS" in out and "role               secondary" in out
    assert lab.pair_calls()[-1] == ("site-a", 26, {"group": "g1", "dry_run": False})
    rc, out, err = await lab.cli("--json", "takeover", "-g", "g1", "--array", "site-b")
    assert rc == 0 and json.loads(out)["variant"] == "swap"
    assert lab.pair_calls()[-1] == ("site-b", 26, {"group": "g1", "dry_run": False})


@pytest.mark.parametrize("status,code", [(ResultStatus.WRONG_STATE, 1), (ResultStatus.UNREACHABLE, 3)])
async def test_takeover_exit_per_status(lab: Lab, status: ResultStatus, code: int) -> None:
    def refuse(p: dict[str, Any]) -> dict[str, Any]:
        raise CommandError(status, "group g1 is SMPL")

    lab.a.handlers[26] = refuse
    rc, _out, err = await lab.cli("takeover", "-g", "g1")
    assert rc == code and err == f"hostctl: site-a: {status.name}: group g1 is SMPL\n"
