"""``storaged --check-config``: would this file start? The loader's checks plus startup's file checks.

Startup refuses a LUN file larger than its configured size (it will not hide data), a LUN path that
is a directory, a file whose directory does not exist, and one a symbolic link takes out of the data
directory; those are found here with ``stat`` and ``realpath`` only, so checking a config never
creates, grows or locks anything. A config reload runs the same checks on the LUNs it would add.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from .config import ArrayConfig, ConfigError, LunConfig, load_config, lun_file_escape


def lun_path(cfg: ArrayConfig, lun: LunConfig) -> str:
    """Where a data LUN's file lives (the config stores it relative to the data directory)."""
    return os.path.join(cfg.data_dir, lun.file)


def lun_file_problem(cfg: ArrayConfig, lun: LunConfig) -> tuple[str, str] | None:
    """Why startup would fail to open this data LUN's file: (field, problem), or None."""
    escape = lun_file_escape(cfg.data_dir, lun)
    if escape is not None:
        return "file", escape
    path = lun_path(cfg, lun)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if os.path.normpath(parent) != os.path.normpath(cfg.data_dir) and not os.path.isdir(parent):
            return "file", f"the directory {parent} does not exist (storaged creates the file, not directories)"
        return None
    except OSError as exc:
        return "file", f"cannot inspect {path}: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "file", f"{path} is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "file", f"{path} is not a regular file"
    if st.st_size > lun.size:
        return "size", (f"{path} holds {st.st_size} bytes, more than the {lun.size} configured; storaged "
                        "refuses to start rather than hide data (raise the size)")
    return None


def file_problems(cfg: ArrayConfig) -> list[str]:
    """Every startup file check that fails, as 'FILE: field: problem' lines."""
    src = cfg.source
    if os.path.exists(cfg.data_dir) and not os.path.isdir(cfg.data_dir):
        return [f"{src}: array.data_dir: {cfg.data_dir} is not a directory"]
    problems = []
    for i, target in enumerate(cfg.targets):
        for j, lun in enumerate(target.luns):
            if lun.kind != "data":
                continue
            found = lun_file_problem(cfg, lun)
            if found is not None:
                problems.append(f"{src}: targets[{i}].luns[{j}].{found[0]}: {found[1]}")
    return problems


def check_config(path: str, **overrides: Any) -> list[str]:
    """Problems that would stop ``storaged --config path`` (with the same command-line overrides)."""
    try:
        cfg = load_config(path).with_overrides(**overrides)
    except ConfigError as exc:
        return [str(exc)]
    return file_problems(cfg)
