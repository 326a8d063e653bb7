"""The CLI end to end (``main_async``/``main``) against an in-process iSCSI portal, and its errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from hostctl.__main__ import main, main_async, parse_params
from hostctl.errors import UsageError

from .conftest import HOST, Site


def host_config(tmp_path: Path, site: Site, **over: object) -> str:
    d: dict = {
        "initiator": HOST,
        "arrays": ["site-a", "site-b", "site-c"],
        "local": {"array": "site-a", "command_device": site.url(1)},
        "timeout": 5,
    }
    d.update(over)
    p = tmp_path / "host.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


async def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = await main_async(list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


async def test_info_json_local(tmp_path: Path, iscsi_site: Site) -> None:
    rc, out, err = await cli("--config", host_config(tmp_path, iscsi_site), "--json", "info")
    assert rc == 0, err
    data = json.loads(out)
    assert data["array"] == "site-a"
    assert {"array": "site-b", "target": data["luns"][0]["target"], "lun": 3} in data["command_devices"]


async def test_info_human(tmp_path: Path, iscsi_site: Site) -> None:
    rc, out, err = await cli("--config", host_config(tmp_path, iscsi_site), "info")
    assert rc == 0, err
    assert out.startswith("array    site-a\nversion  0.1.0\n")
    for section in ("LUNs", "LUN map", "Command devices", "Links"):
        assert f"\n{section}\n" in out
    assert "site-b lun 2 (online, command device)" in out


async def test_routed_to_site_b_through_site_a(tmp_path: Path, iscsi_site: Site) -> None:
    cfg = host_config(tmp_path, iscsi_site)
    rc, out, err = await cli("--config", cfg, "--json", "--array", "site-b", "info")
    assert rc == 0, err
    assert json.loads(out)["array"] == "site-b"
    assert iscsi_site.stores[3].executed == 1 and iscsi_site.stores[1].executed == 1  # ARRAY_INFO on A
    rc, out, err = await cli("--config", cfg, "luns", "--array", "site-b")  # options after the command too
    assert rc == 0, err
    assert out.splitlines()[0].split() == ["LUN", "TYPE", "SIZE", "THIN", "MAP"]
    assert "command_device" in out and "16 MiB" in out


async def test_link_table(tmp_path: Path, iscsi_site: Site) -> None:
    rc, out, err = await cli("--config", host_config(tmp_path, iscsi_site), "link")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["PEER", "STATE", "SINCE"]
    assert "site-c" in lines[2] and "down" in lines[2] and "connection refused" in lines[2]


async def test_link_down_is_unreachable(tmp_path: Path, iscsi_site: Site) -> None:
    rc, out, err = await cli("--config", host_config(tmp_path, iscsi_site), "--array", "site-c", "info")
    assert rc == 3
    assert err.startswith("hostctl: site-c: unreachable: the link from site-a to site-c is down")
    assert err.count("\n") == 1 and out == ""


async def test_array_not_in_config_is_refused(tmp_path: Path, iscsi_site: Site) -> None:
    rc, _out, err = await cli("--config", host_config(tmp_path, iscsi_site), "--array", "site-z", "info")
    assert rc == 2 and "site-z is not one this host drives" in err


async def test_array_without_command_device(tmp_path: Path, iscsi_site: Site) -> None:
    cfg = host_config(tmp_path, iscsi_site, arrays=["site-a", "site-d"])
    rc, _out, err = await cli("--config", cfg, "--array", "site-d", "info")
    assert (
        rc == 2 and "site-a has no command device for site-d" in err and "registered: site-a, site-b" in err
    )


async def test_raw_echo_json_and_human(tmp_path: Path, iscsi_site: Site) -> None:
    cfg = host_config(tmp_path, iscsi_site)
    rc, out, err = await cli(
        "--config",
        cfg,
        "--json",
        "raw",
        "ECHO",
        "-p",
        "n=3",
        "--param",
        "s=x",
        "--json-params",
        '{"o": {"k": [1]}}',
    )
    assert rc == 0, err
    d = json.loads(out)
    assert d["state"] == "DONE" and d["status"] == "OK" and d["error"] == "" and len(d["tag"]) == 16
    assert d["data"]["echo"] == {"n": 3, "s": "x", "o": {"k": [1]}} and d["data"]["origin"] == HOST
    rc, out, err = await cli("--config", cfg, "raw", "1", "--no-edited-data")
    assert rc == 0, err
    assert "state    DONE" in out and "status   OK" in out and out.rstrip().endswith("data  -")


async def test_raw_error_status_prints_response_and_exits_1(tmp_path: Path, iscsi_site: Site) -> None:
    rc, out, err = await cli(
        "--config",
        host_config(tmp_path, iscsi_site),
        "raw",
        "101",
        "-p",
        "status=WRONG_STATE",
        "-p",
        "message=pair is suspended",
    )
    assert rc == 1
    assert "status   WRONG_STATE" in out
    assert err == "hostctl: site-a: WRONG_STATE: fail: pair is suspended\n"


async def test_device_override_without_config(
    tmp_path: Path, iscsi_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hostctl.config.DEFAULT_PATH", str(tmp_path / "none.yaml"))
    monkeypatch.delenv("HOSTCTL_CONFIG", raising=False)
    rc, out, err = await cli("--device", iscsi_site.url(1), "--json", "info")
    assert rc == 0, err
    assert json.loads(out)["array"] == "site-a"
    rc, out, err = await cli("--device", iscsi_site.url(1), "--json", "--array", "site-b", "info")
    assert rc == 0, err
    assert json.loads(out)["array"] == "site-b"


async def test_hostctl_config_env(tmp_path: Path, iscsi_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTCTL_CONFIG", host_config(tmp_path, iscsi_site))
    rc, out, err = await cli("--json", "luns")
    assert rc == 0, err
    assert len(json.loads(out)["luns"]) == 4


async def test_connection_refused(tmp_path: Path, iscsi_site: Site) -> None:
    cfg = host_config(tmp_path, iscsi_site)
    rc, _out, err = await cli("--config", cfg, "--device", "iscsi://127.0.0.1:1/iqn.2026-11.x:y/1", "info")
    assert (
        rc == 3 and err == "hostctl: cannot reach iscsi://127.0.0.1:1/iqn.2026-11.x:y/1: connection refused\n"
    )


async def test_not_a_command_device(tmp_path: Path, iscsi_site: Site) -> None:
    rc, _out, err = await cli(
        "--config", host_config(tmp_path, iscsi_site), "--device", iscsi_site.url(0), "info"
    )
    assert rc == 5 and "not a command device" in err


async def test_timeout_exit_4(tmp_path: Path, iscsi_site: Site) -> None:
    rc, _out, err = await cli(
        "--config", host_config(tmp_path, iscsi_site), "--timeout", "0.3", "raw", "100", "-p", "seconds=5"
    )
    assert rc == 4 and "did not complete within 0.3s" in err


@pytest.mark.parametrize(
    "argv,words",
    [
        ([], "required: COMMAND"),
        (["frob"], "invalid choice"),
        (["info", "--bogus"], "unrecognized arguments"),
        (["--timeout", "-1", "info"], "timeout must be above 0"),
        (["--timeout", "soon", "info"], "expected seconds"),
        (["raw"], "required: PROCESS"),
        (["raw", "NOPE", "--device", "/dev/null"], "unknown process"),
        (["raw", "1", "-p", "novalue", "--device", "/dev/null"], "expected KEY=VALUE"),
        (["raw", "1", "--json-params", "[1]", "--device", "/dev/null"], "must be a JSON object"),
        (["--config", "/nonexistent/hostctl.yaml", "info"], "no such file"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hostctl.client.open_device", _fail_open)
    out, err = io.StringIO(), io.StringIO()
    assert main(argv, stdout=out, stderr=err) == 2
    assert err.getvalue().startswith("hostctl: ") and words in err.getvalue(), err.getvalue()
    assert err.getvalue().count("\n") == 1


async def _fail_open(*a: object, **k: object) -> object:
    raise AssertionError("must fail before opening a device")


def test_no_config_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hostctl.config.DEFAULT_PATH", str(tmp_path / "none.yaml"))
    monkeypatch.delenv("HOSTCTL_CONFIG", raising=False)
    err = io.StringIO()
    assert main(["info"], stdout=io.StringIO(), stderr=err) == 2
    assert "no host config" in err.getvalue() and "--device" in err.getvalue()


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "exit codes:" in capsys.readouterr().out
    assert main(["--version"]) == 0


def test_parse_params() -> None:
    assert parse_params(["a=1", "b=true", "c=null", "d=text", 'e="7"', "f=a=b"], '{"z": 0}') == {
        "z": 0,
        "a": 1,
        "b": True,
        "c": None,
        "d": "text",
        "e": "7",
        "f": "a=b",
    }
    with pytest.raises(UsageError):
        parse_params(["=1"], None)


def test_main_from_a_thread_with_its_own_loop(tmp_path: Path) -> None:
    """main() runs its own event loop (what `python -m hostctl` and the lead's tests call)."""
    err = io.StringIO()
    rc = main(["--device", str(tmp_path / "missing"), "info"], stdout=io.StringIO(), stderr=err)
    assert rc == 3 and "no such device" in err.getvalue()
