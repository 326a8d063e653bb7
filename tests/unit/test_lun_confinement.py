"""LUN files stay inside the data directory unless a LUN says ``allow_outside_data_dir: true``
(issue 8), also through symbolic links: a link inside the data directory to a file outside made
storaged serve (and grow) that file, and a linked parent directory made it create one anywhere.
``storaged --check-config`` reports it naming the file and the field; startup and reload are in
tests/integration/test_lun_confinement.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storaged.config import ConfigError, load_config, lun_file_escape
from storaged.configcheck import check_config

GOOD = """\
array: {name: site-a, data_dir: data}
targets:
  - name: iqn.2026-11.io.storaged:a
    luns:
      - {lun: 0, size: 1MiB}
      - {lun: 1, size: 2MiB, file: FILE}
"""
FIELD = "targets[0].luns[1].file: "


def setup(tmp_path: Path, file: str = "one.img", extra: str = "") -> tuple[str, Path, Path]:
    """The config (LUN 1's file = ``file``), its data directory, and a directory outside it."""
    (tmp_path / "data").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    path = tmp_path / "x.yaml"
    path.write_text(GOOD.replace("file: FILE", f"file: {file}{extra}"))
    return str(path), tmp_path / "data", outside


def escapes(problems: list[str], path: str) -> list[str]:
    return [p for p in problems if p.startswith(f"{path}: {FIELD}") and "outside the data directory" in p]


def test_symlink_to_a_file_outside_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    path, data, outside = setup(tmp_path)
    (outside / "x.img").write_bytes(bytes(512))
    (data / "one.img").symlink_to(outside / "x.img")
    load_config(path)  # the loader cannot know: the link is on disk, under the final data_dir
    (problem,) = escapes(check_config(path), path)
    assert "one.img" in problem and str(outside / "x.img") in problem and "allow_outside_data_dir" in problem


def test_dangling_symlink_pointing_outside_is_refused_and_nothing_created(tmp_path: Path) -> None:
    path, data, outside = setup(tmp_path)
    (data / "one.img").symlink_to(outside / "created-by-storaged.img")
    assert escapes(check_config(path), path)
    assert not (outside / "created-by-storaged.img").exists()


def test_symlinked_parent_directory_pointing_outside_is_refused(tmp_path: Path) -> None:
    path, data, outside = setup(tmp_path, "sub/one.img")
    (data / "sub").symlink_to(outside, target_is_directory=True)
    (problem,) = escapes(check_config(path), path)
    assert "sub/one.img" in problem and str(outside / "one.img") in problem


def test_symlink_chain_and_relative_link_out_are_refused(tmp_path: Path) -> None:
    path, data, _outside = setup(tmp_path)
    (data / "hop.img").symlink_to("../outside/x.img")  # relative, out of the directory
    (data / "one.img").symlink_to("hop.img")  # to a link inside, which leads out
    assert escapes(check_config(path), path)


def test_data_dir_override_is_the_directory_checked(tmp_path: Path) -> None:
    path, _data, outside = setup(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "one.img").symlink_to(outside / "x.img")
    assert not escapes(check_config(path), path)
    assert escapes(check_config(path, data_dir=str(other)), path)


def test_symlinks_that_stay_inside_are_fine(tmp_path: Path) -> None:
    path, data, _outside = setup(tmp_path, "sub/one.img")
    (data / "real").mkdir()
    (data / "sub").symlink_to("real", target_is_directory=True)
    (data / "lun0.img").symlink_to(data / "real" / "zero.img")
    assert check_config(path) == []


def test_data_dir_that_is_itself_a_symlink_is_fine(tmp_path: Path) -> None:
    real = tmp_path / "real-data"
    real.mkdir()
    (tmp_path / "x.yaml").write_text(GOOD.replace("file: FILE", "file: one.img").replace("data_dir: data",
                                                                                         "data_dir: link"))
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    (real / "sub").mkdir()
    assert check_config(str(tmp_path / "x.yaml")) == []


def test_outside_allowed_explicitly(tmp_path: Path) -> None:
    path, data, outside = setup(tmp_path, extra=", allow_outside_data_dir: true")
    (data / "one.img").symlink_to(outside / "x.img")
    assert check_config(path) == []


def test_lexical_escape_still_refused_by_the_loader(tmp_path: Path) -> None:
    path, _data, _outside = setup(tmp_path, "../outside/x.img")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {FIELD}")
    # the same message shape as the symlink refusal: what, where, and how to allow it
    assert "outside the data directory" in str(info.value) and "allow_outside_data_dir" in str(info.value)


def test_lun_file_escape_ignores_virtual_and_command_device_luns(tmp_path: Path) -> None:
    path, data, outside = setup(tmp_path)
    (data / "one.img").symlink_to(outside / "x.img")
    cfg = load_config(path)
    data_lun = cfg.targets[0].luns[1]
    assert lun_file_escape(str(data), data_lun) is not None
    assert lun_file_escape(str(data), cfg.targets[0].luns[0]) is None
    assert os.path.islink(data / "one.img")  # nothing was changed by looking
