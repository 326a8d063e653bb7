"""The host config: strict parsing, errors that name the file and the field, where it is found."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hostctl.config import DEFAULT_PATH, ENV_VAR, find_config, load_config, parse_config
from hostctl.errors import EXIT_USAGE, ConfigError

URL = "iscsi://127.0.0.1:3260/iqn.2026-11.io.storaged:site-a/1"


def good(**over: object) -> dict:
    d: dict = {
        "initiator": "iqn.2026-11.io.storaged:host1",
        "arrays": ["site-a", "site-b"],
        "local": {"array": "site-a", "command_device": URL, "devices": {}},
        "timeout": 30,
    }
    d.update(over)
    return d


def write(tmp_path: Path, data: object) -> str:
    p = tmp_path / "hostctl.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(p)


def test_full_example(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, good()))
    assert cfg.initiator == "iqn.2026-11.io.storaged:host1"
    assert cfg.arrays == ("site-a", "site-b")
    assert cfg.local.array == "site-a" and cfg.local.command_device == URL
    assert cfg.timeout == 30.0 and cfg.allows("site-b") and not cfg.allows("site-c")
    assert cfg.source.endswith("hostctl.yaml")


def test_minimal_defaults() -> None:
    cfg = parse_config({"local": {"array": "site-a", "command_device": "/dev/sdb"}})
    assert cfg.arrays == ("site-a",) and cfg.timeout == 30.0 and cfg.local.devices == {}
    assert cfg.initiator.startswith("iqn.")


def test_devices_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            good(
                local={
                    "array": "site-a",
                    "command_device": "cmd.img",
                    "devices": {3: "/dev/sdc", "4": "b.img"},
                }
            ),
        )
    )
    assert cfg.local.command_device == str(tmp_path / "cmd.img")
    assert cfg.local.devices == {3: "/dev/sdc", 4: str(tmp_path / "b.img")}


@pytest.mark.parametrize(
    "data,field,words",
    [
        (good(initator="x"), "initator", "unknown field"),
        (
            good(local={"array": "site-a", "command_device": URL, "device": {}}),
            "local.device",
            "unknown field",
        ),
        (good(local=None), "local", "is required"),
        (good(local={"command_device": URL}), "local.array", "is required"),
        (good(local={"array": "site-a"}), "local.command_device", "is required"),
        (
            good(local={"array": "site-a", "command_device": "iscsi://host/only-target"}),
            "local.command_device",
            "iscsi://",
        ),
        (good(local={"array": "site-a", "command_device": "nbd://x/1"}), "local.command_device", "expected"),
        (good(local={"array": "site-c", "command_device": URL}), "local.array", "not in arrays"),
        (
            good(local={"array": "site-a", "command_device": URL, "devices": {"x": "/dev/sdb"}}),
            "local.devices.x",
            "LUN number",
        ),
        (
            good(local={"array": "site-a", "command_device": URL, "devices": {2: 5}}),
            "local.devices.2",
            "path",
        ),
        (
            good(local={"array": "site-a", "command_device": URL, "devices": ["/dev/sdb"]}),
            "local.devices",
            "mapping",
        ),
        (good(arrays="site-a"), "arrays", "list"),
        (good(arrays=["site-a", "site-a"]), "arrays[1]", "twice"),
        (good(arrays=["site-a", "bad name"]), "arrays[1]", "array name"),
        (good(timeout=0), "timeout", "seconds"),
        (good(timeout="soon"), "timeout", "seconds"),
        (good(timeout=True), "timeout", "seconds"),
        (good(initiator="host1"), "initiator", "iSCSI name"),
        (["a", "list"], "(top level)", "mapping"),
    ],
)
def test_errors_name_file_and_field(tmp_path: Path, data: object, field: str, words: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.exit_code == EXIT_USAGE == 2
    assert str(e.value).startswith(f"{path}: {field}: "), str(e.value)
    assert words in str(e.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "local:\n  array: [unclosed\n")
    with pytest.raises(ConfigError, match=r"line \d+: not valid YAML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "nope.yaml"))


def test_find_config_precedence() -> None:
    assert find_config("/x.yaml", {ENV_VAR: "/y.yaml"}) == ("/x.yaml", True)
    assert find_config(None, {ENV_VAR: "/y.yaml"}) == ("/y.yaml", True)
    assert find_config(None, {}) == (DEFAULT_PATH, False)
