"""LUN entries of the configuration and the confinement of LUN files to the data directory.

The loader's check is lexical (no absolute path, no ``..``); ``lun_file_escape`` resolves
symbolic links once the final data directory is known.
"""

from __future__ import annotations

import os

from .config_reader import ConfigError, Reader, parse_size
from .config_types import ArrayConfig, CommandDeviceConfig, LunConfig, MapConfig


def _serial(r: Reader) -> str | None:
    """VPD page 80h and the T10 designator carry the serial as ASCII: refuse what they cannot."""
    serial = r.get("serial", str)
    if serial is not None and not (1 <= len(serial) <= 64 and all(0x20 < ord(c) < 0x7F for c in serial)):
        raise r.error("serial", f"{serial!r}: use 1 to 64 printable ASCII characters, no spaces")
    return serial


def parse_lun(r: Reader, index: int) -> LunConfig:
    """One entry of a target's ``luns``: a data LUN, a command device or a mapped (virtual) LUN."""
    lun = r.get("lun", int, index)
    if not 0 <= lun < 16384:
        raise r.error("lun", "LUN numbers run from 0 to 16383")
    mapping = None
    if r.data.get("map") is not None:
        m = r.sub("map")
        mapping = MapConfig(array=m.get("array", str, required=True), lun=m.get("lun", int, required=True),
                            target=m.get("target", str, ""))
        m.finish()
        for key in ("size", "file", "block_size", "thin", "command_device"):
            if key in r.data:
                raise r.error(key, "a mapped LUN (virtual volume) takes its geometry from the peer's LUN")
        r.used.add("map")
        cfg = LunConfig(lun=lun, file="", size=0, product=r.get("product", str, "storaged VVOL")[:16],
                        serial=_serial(r), read_only=r.get("read_only", bool, False), map=mapping)
        r.finish()
        return cfg
    r.used.add("map")
    cmddev = None
    raw_cd = r.data.get("command_device")
    if raw_cd is True or isinstance(raw_cd, dict):
        c = (r.sub("command_device") if isinstance(raw_cd, dict)
             else Reader(r.source, {}, r.path_of("command_device")))
        allowed = c.get("allowed", list)
        if allowed is not None and not all(isinstance(a, str) for a in allowed):
            raise c.error("allowed", "expected a list of initiator name patterns")
        slot_size = parse_size(c.get("slot_size", (int, str), 256 * 1024), r.source, c.path_of("slot_size"))
        if slot_size % 4096:
            raise c.error("slot_size", "must be a multiple of 4096")
        cmddev = CommandDeviceConfig(allowed=tuple(allowed) if allowed is not None else None, slot_size=slot_size)
        c.finish()
        r.used.add("command_device")
    elif raw_cd not in (None, False):
        raise r.error("command_device", "expected true or a mapping (allowed, slot_size)")
    else:
        r.used.add("command_device")
    block_size = r.get("block_size", int, 512)
    if block_size not in (512, 4096):
        raise r.error("block_size", "must be 512 or 4096")
    default_size = "16MiB" if cmddev is not None else None
    size = parse_size(r.get("size", (int, str), default_size, required=default_size is None), r.source,
                      r.path_of("size"))
    if size % block_size:
        raise r.error("size", f"{size} is not a multiple of the block size {block_size}")
    if cmddev is not None and size < 2 * cmddev.slot_size:
        raise r.error("size", f"a command device needs room for the directory and a slot ({2 * cmddev.slot_size})")
    file = r.get("file", str, f"lun{lun}.img")
    outside = r.get("allow_outside_data_dir", bool, False)
    if not file.strip():
        raise r.error("file", "must name a file")
    given, file = file, os.path.normpath(file)
    if not outside and (os.path.isabs(file) or file == ".." or file.startswith("../")):
        raise r.error("file", f"{given} is outside the data directory (set allow_outside_data_dir: true on "
                              "this LUN if that is intended)")
    cfg = LunConfig(
        lun=lun,
        file=file,
        size=size,
        block_size=block_size,
        thin=r.get("thin", bool, True),
        read_only=r.get("read_only", bool, False),
        product=r.get("product", str, "storaged CMDDEV" if cmddev else "storaged LUN")[:16],
        serial=_serial(r),
        command_device=cmddev,
        allow_outside_data_dir=outside,
    )
    r.finish()
    return cfg


def lun_file_escape(data_dir: str, lun: LunConfig) -> str | None:
    """Why a data LUN's file lies outside ``data_dir`` once every symbolic link on its way is
    resolved (a link to a file outside, a linked parent directory), or None (inside, allowed, or
    not a file LUN). The loader's check is lexical; this one needs the final data_dir and the disk,
    so startup, ``--check-config`` and reload run it. The data directory may itself be a link."""
    if lun.allow_outside_data_dir or lun.kind != "data":
        return None
    root = os.path.realpath(data_dir)
    real = os.path.realpath(os.path.join(data_dir, lun.file))
    if os.path.commonpath((root, real)) == root:
        return None  # inside (the directory itself is the directory check's to report)
    return (f"{lun.file} is outside the data directory through a symbolic link (it resolves to {real}, the data "
            f"directory to {root}; set allow_outside_data_dir: true on this LUN if that is intended)")


def check_lun_files_confined(cfg: ArrayConfig) -> None:
    """Startup's check: ConfigError naming the first data LUN a symbolic link takes out of the data
    directory (after ``--data-dir``, before any file is opened or created)."""
    for i, t in enumerate(cfg.targets):
        for j, lun in enumerate(t.luns):
            problem = lun_file_escape(cfg.data_dir, lun)
            if problem is not None:
                raise ConfigError(cfg.source, f"targets[{i}].luns[{j}].file", problem)

