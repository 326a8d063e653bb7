"""Host: array name -> command device (Fig. 8 S802), in block-device mode (iSCSI mode: test_cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hostctl.client import Host
from hostctl.config import parse_config
from hostctl.errors import ConfigError, UnreachableError, UsageError
from storaged.cmddev.store import CommandDeviceStore

from .conftest import HOST, NAA_B_CMD, StoreIO, make_dispatcher, make_store, site_info


@pytest.fixture
def devices(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Block device paths -> command device stores: /dev/sdb is site-a's, anything else site-b's."""
    stores: dict[str, CommandDeviceStore] = {
        "a": make_store(make_dispatcher(site_info("site-a"))),
        "b": make_store(make_dispatcher(site_info("site-b"))),
    }
    opened: list[str] = []

    def block_device(path: str) -> StoreIO:
        opened.append(path)
        return StoreIO(stores["a" if path == "/dev/sdb" else "b"], HOST, name=path)

    async def open_device(spec: str, **kw: Any) -> StoreIO:
        return block_device(spec)

    monkeypatch.setattr("hostctl.client.open_device", open_device)
    monkeypatch.setattr("hostctl.client.BlockDevice", block_device)
    yield {"stores": stores, "opened": opened}
    for s in stores.values():
        s.close()


def config(**local: Any) -> Any:
    return parse_config(
        {
            "initiator": HOST,
            "arrays": ["site-a", "site-b"],
            "local": {"array": "site-a", "command_device": "/dev/sdb", **local},
        },
        "host.yaml",
    )


async def test_local_array_uses_the_configured_device(devices: dict[str, Any]) -> None:
    async with Host(config()) as host:
        c = await host.client()
        assert c is await host.client("site-a")
        assert (await c.run(2, {})).data["array"] == "site-a"
    assert devices["opened"] == ["/dev/sdb"]


async def test_routed_through_local_devices_map(devices: dict[str, Any]) -> None:
    async with Host(config(devices={3: "/dev/sdc"})) as host:
        c = await host.client("site-b")
        assert c.via == "site-a" and c.array == "site-b"
        assert (await c.run(2, {})).data["array"] == "site-b"
        assert await host.client("site-b") is c  # cached
    assert devices["opened"] == ["/dev/sdb", "/dev/sdc"]


async def test_routed_through_disk_by_id(devices: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / f"wwn-0x{NAA_B_CMD}").touch()
    async with Host(config(), by_id_dir=str(tmp_path)) as host:
        c = await host.client("site-b")
        assert (await c.run(2, {})).data["array"] == "site-b"
    assert devices["opened"][1] == str(tmp_path / f"wwn-0x{NAA_B_CMD}")


async def test_no_block_device_for_the_route_says_how_to_configure_it(
    devices: dict[str, Any], tmp_path: Path
) -> None:
    async with Host(config(), by_id_dir=str(tmp_path)) as host:
        with pytest.raises(ConfigError) as e:
            await host.client("site-b")
    msg = str(e.value)
    assert e.value.exit_code == 2
    assert msg.startswith("host.yaml: local.devices.3: site-b's command device is LUN 3 of site-a")
    assert f"wwn-0x{NAA_B_CMD}" in msg and "local.devices: {3: /dev/sdX}" in msg


async def test_refuses_arrays_not_listed(devices: dict[str, Any]) -> None:
    async with Host(config()) as host:
        with pytest.raises(UsageError, match="site-x is not one this host drives"):
            await host.client("site-x")
    assert devices["opened"] == []  # refused before any I/O


async def test_device_override_replaces_the_entry_point(devices: dict[str, Any]) -> None:
    async with Host(config(), device="/dev/sdz") as host:
        c = await host.client()
        assert c.io.name == "/dev/sdz"
        assert (await c.run(2, {})).data["array"] == "site-b"  # whatever that device reaches


async def test_link_down_before_the_virtual_command_device_attached(monkeypatch: pytest.MonkeyPatch) -> None:
    """A link that never came up: the local array lists no command device for the peer yet."""
    info = site_info("site-a")
    info["command_devices"] = [e for e in info["command_devices"] if e["array"] == "site-a"]
    info["links"] = [{"peer": "site-b", "state": "down", "last_error": "authentication failed"}]
    store = make_store(make_dispatcher(info))

    async def open_device(spec: str, **kw: Any) -> StoreIO:
        return StoreIO(store, HOST, name=spec)

    monkeypatch.setattr("hostctl.client.open_device", open_device)
    async with Host(config()) as host:
        with pytest.raises(UnreachableError) as e:
            await host.client("site-b")
    assert e.value.exit_code == 3
    assert (
        str(e.value)
        == "site-b: unreachable: the link from site-a to site-b is down (last error: authentication failed)"
    )
    store.close()
