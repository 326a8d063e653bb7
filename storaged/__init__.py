"""storaged: storage arrays in software (iSCSI targets, command devices, journal-based remote copy).

``__version__`` is the one version of the project: the ``storaged`` distribution's metadata, written
from pyproject.toml at install time. storaged, the array's ARRAY_INFO and hostctl all report it.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path


def _version() -> str:
    try:
        return importlib.metadata.version("storaged")
    except importlib.metadata.PackageNotFoundError:
        pass
    # A source tree that was never installed: its pyproject.toml is still the source.
    try:
        with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, tomllib.TOMLDecodeError, KeyError):
        return "0+unknown"


__version__ = _version()
