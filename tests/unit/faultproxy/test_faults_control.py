"""Faults validation, the live-command language and CLI argument parsing (no sockets)."""

from __future__ import annotations

import pytest

from storaged.faultproxy import FaultProxy, Faults, LinkFaults
from storaged.faultproxy.__main__ import parse_args, parse_hostport
from storaged.faultproxy.control import apply_command, parse_bytes, parse_rate


def test_faults_validate_on_every_assignment() -> None:
    f = LinkFaults()
    for name, bad in [("delay", -1), ("jitter", "x"), ("loss", 1.5), ("loss", -0.1), ("bandwidth", 0),
                      ("bandwidth", -5), ("stall", 1), ("drop_after_bytes", 1.5), ("loss_penalty", -0.2)]:
        with pytest.raises(ValueError):
            setattr(f, name, bad)
    with pytest.raises(ValueError):
        LinkFaults(delay=-0.1)
    f.bandwidth = 1e6
    f.drop_after_bytes = 0
    f.bandwidth = None
    assert f == LinkFaults(drop_after_bytes=0)


def test_update_is_all_or_nothing() -> None:
    f = LinkFaults()
    with pytest.raises(ValueError):
        f.update(delay=0.5, loss=2.0)
    with pytest.raises(TypeError):
        f.update(delay=0.5, latency=1)
    assert f == LinkFaults()


def test_set_per_direction_or_both() -> None:
    faults = Faults.symmetric(delay=0.1)
    assert faults.c2s is not faults.s2c and faults.c2s == faults.s2c == LinkFaults(delay=0.1)
    faults.set("s2c", stall=True)
    assert faults.s2c.stall and not faults.c2s.stall
    faults.set(bandwidth=1000)
    assert faults.c2s.bandwidth == faults.s2c.bandwidth == 1000
    assert faults.direction("c2s") is faults.c2s
    with pytest.raises(ValueError):
        faults.set("up", delay=1)
    with pytest.raises(ValueError):
        faults.direction("both")  # type: ignore[arg-type]


def test_rates_and_sizes() -> None:
    assert parse_rate("1000") == 1000
    assert parse_rate("64k") == 64_000
    assert parse_rate("10M") == 10_000_000
    assert parse_rate("1MiB/s") == 1 << 20
    assert parse_rate("2.5KiB") == 2560
    assert parse_bytes("0") == 0
    for bad in ("", "fast", "-1", "0", "1X"):
        with pytest.raises(ValueError):
            parse_rate(bad)


@pytest.fixture
def proxy() -> FaultProxy:
    return FaultProxy(("127.0.0.1", 0), ("127.0.0.1", 9))  # never started: commands only touch faults


def test_commands_change_faults(proxy: FaultProxy) -> None:
    f = proxy.faults
    assert apply_command(proxy, "delay 0.05") == "ok"
    assert f.c2s.delay == f.s2c.delay == 0.05
    assert apply_command(proxy, "jitter 0.01 s2c") == "ok"
    assert f.s2c.jitter == 0.01 and f.c2s.jitter == 0
    assert apply_command(proxy, "bandwidth 10M c2s") == "ok"
    assert f.c2s.bandwidth == 10_000_000 and f.s2c.bandwidth is None
    assert apply_command(proxy, "bandwidth off") == "ok" and f.c2s.bandwidth is None
    assert apply_command(proxy, "loss 0.01 0.3") == "ok"
    assert (f.c2s.loss, f.c2s.loss_penalty) == (0.01, 0.3)
    assert apply_command(proxy, "drop-after 1KiB s2c") == "ok" and f.s2c.drop_after_bytes == 1024
    assert apply_command(proxy, "drop-after off s2c") == "ok" and f.s2c.drop_after_bytes is None
    assert apply_command(proxy, "stall c2s") == "ok" and f.c2s.stall and not f.s2c.stall
    assert apply_command(proxy, "resume") == "ok" and not f.c2s.stall
    assert apply_command(proxy, "refuse on") == "ok" and f.refuse
    assert apply_command(proxy, "refuse off") == "ok" and not f.refuse
    assert apply_command(proxy, "cut") == "ok cut 0 connection(s)"
    assert apply_command(proxy, "down").startswith("ok link down") and f.refuse
    apply_command(proxy, "stall")
    assert apply_command(proxy, "up") == "ok" and not f.refuse and not f.c2s.stall and not f.s2c.stall
    assert apply_command(proxy, "clear") == "ok"
    assert f == Faults()
    assert apply_command(proxy, "") == "ok"


def test_reports_are_single_lines(proxy: FaultProxy) -> None:
    stats = apply_command(proxy, "stats")
    assert stats.startswith("stats accepted=0 active=0") and "bytes_c2s=0" in stats and "\n" not in stats
    show = apply_command(proxy, "show")
    assert show.startswith("faults refuse=off") and "c2s delay=0" in show and "\n" not in show
    assert "\n" not in apply_command(proxy, "help")


@pytest.mark.parametrize("line", ["delay", "delay -1", "delay soon", "loss 2", "refuse maybe", "stall now",
                                  "bandwidth fast", "teleport", "cut c2s extra", "drop-after -3"])
def test_bad_commands_answer_errors_and_change_nothing(proxy: FaultProxy, line: str) -> None:
    assert apply_command(proxy, line).startswith("error:")
    assert proxy.faults == Faults()


def test_cli_arguments() -> None:
    assert parse_hostport("127.0.0.1:3300") == ("127.0.0.1", 3300)
    assert parse_hostport("[::1]:0") == ("::1", 0)
    args = parse_args(["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:3301", "--delay", "0.05",
                       "--bandwidth", "1MiB", "--loss", "0.01", "--loss-penalty", "0.3",
                       "--control", "127.0.0.1:0"])
    assert args.upstream == ("127.0.0.1", 3301) and args.bandwidth == 1 << 20 and args.loss_penalty == 0.3
    with pytest.raises(SystemExit):
        parse_args(["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--control", "0.0.0.0:7000"])
    with pytest.raises(SystemExit):
        parse_args(["--listen", "nocolon", "--upstream", "127.0.0.1:1"])
