"""Config loading: typed results, and errors that name the file, the field and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from storaged.config import ConfigError, default_config, load_config, parse_size


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "array.yaml"
    p.write_text(text)
    return str(p)


GOOD = """
array: {name: site-a, data_dir: data}
iscsi: {listen: "127.0.0.1:3270", queue_depth: 64}
targets:
  - name: iqn.2026-11.io.storaged:a
    initiators: [iqn.2026-11.test:h1]
    chap: {username: u, secret: twelve-chars-ok}
    luns:
      - {lun: 0, size: 2GiB}
      - {lun: 5, size: 4096, block_size: 4096, thin: false, file: five.img}
"""


def test_good_config_loads_into_typed_objects(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.name == "site-a"
    assert cfg.data_dir == str(tmp_path / "data")  # relative to the config file
    assert cfg.iscsi.listen == "127.0.0.1:3270" and cfg.iscsi.queue_depth == 64
    t = cfg.targets[0]
    assert t.initiators == frozenset({"iqn.2026-11.test:h1"})
    assert t.chap is not None and t.chap.username == "u"
    assert [(lun.lun, lun.size, lun.file, lun.thin) for lun in t.luns] == [
        (0, 2 << 30, "lun0.img", True), (5, 4096, "five.img", False)]


@pytest.mark.parametrize("text, field, problem", [
    (GOOD.replace("size: 2GiB", "size: big"), "targets[0].luns[0].size", "expected a size"),
    (GOOD.replace("queue_depth: 64", "queue_dept: 64"), "iscsi.queue_dept", "unknown key"),
    (GOOD.replace("lun: 5", "lun: 0"), "targets[0].luns[1].lun", "appears twice"),
    (GOOD.replace("secret: twelve-chars-ok", "secret: short"), "targets[0].chap.secret", "12 to 256"),
    (GOOD.replace("iqn.2026-11.io.storaged:a", "not-an-iqn"), "targets[0].name", "not an iqn"),
    (GOOD.replace('"127.0.0.1:3270"', "localhost"), "iscsi.listen", "HOST:PORT"),
    (GOOD.replace("block_size: 4096", "block_size: 1000"), "targets[0].luns[1].block_size", "512 or 4096"),
    (GOOD.replace("name: site-a, ", ""), "array.name", "is required"),
])
def test_bad_config_names_file_field_and_problem(tmp_path: Path, text: str, field: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {field}: "), msg
    assert problem in msg


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 3, column 2"):
        load_config(write(tmp_path, "array:\n  name: a\n - b\n"))


def test_sizes_accept_units() -> None:
    assert parse_size("1GiB", "f", "x") == 1 << 30
    assert parse_size("512M", "f", "x") == 512 << 20
    assert parse_size("1 TiB", "f", "x") == 1 << 40
    assert parse_size(4096, "f", "x") == 4096


def test_default_array_has_a_large_thin_data_lun_as_its_largest() -> None:
    cfg = default_config()
    assert cfg.iscsi.listen == "127.0.0.1:3260"
    (target,) = cfg.targets
    largest = max(target.luns, key=lambda lun: lun.size)
    assert largest.size >= 1 << 30 and largest.thin
    assert target.initiators is None and target.chap is None


@pytest.mark.parametrize("file", ["../x.img", "/etc/x.img", "sub/../../x.img", "./../x.img"])
def test_lun_file_outside_the_data_dir_is_refused_naming_file_and_field(tmp_path: Path, file: str) -> None:
    path = write(tmp_path, GOOD.replace("file: five.img", f"file: {file}"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: targets[0].luns[1].file: "), msg
    assert file in msg and "allow_outside_data_dir" in msg


def test_lun_file_outside_the_data_dir_when_explicitly_allowed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace("file: five.img", "file: /srv/x.img, allow_outside_data_dir: true")))
    lun = cfg.targets[0].luns[1]
    assert lun.file == "/srv/x.img" and lun.allow_outside_data_dir
    cfg = load_config(write(tmp_path, GOOD.replace("file: five.img", "file: sub/./five.img")))
    assert cfg.targets[0].luns[1].file == "sub/five.img"  # inside: fine, normalised


def test_write_budgets_and_task_slots_are_configurable(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace(
        "queue_depth: 64", "queue_depth: 64, session_write_budget: 8MiB, array_write_budget: 1GiB, array_tasks: 256")))
    ic = cfg.iscsi
    assert (ic.session_write_budget, ic.array_write_budget, ic.array_tasks) == (8 << 20, 1 << 30, 256)
    d = default_config().iscsi
    assert d.session_write_budget == 32 << 20 and d.array_write_budget == 128 << 20 and d.array_tasks == 1024
    with pytest.raises(ConfigError, match=r"iscsi.array_write_budget: .*session_write_budget"):
        load_config(write(tmp_path, GOOD.replace("queue_depth: 64", "queue_depth: 64, array_write_budget: 1MiB")))
