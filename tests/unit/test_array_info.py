"""ARRAY_INFO (hostctl info): the portal a host should use."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from storaged.array.array import Array
from storaged.config import default_config


def test_info_shows_the_advertised_portal_not_the_wildcard_listener(tmp_path: Path) -> None:
    """With `listen: 0.0.0.0:3260` and `advertise: site-b:3260` (the compose lab), hostctl info
    said `portal 0.0.0.0:3260`, an address no host can use; it now says what discovery says."""
    cfg = default_config().with_overrides(listen="0.0.0.0:3260", data_dir=str(tmp_path))
    cfg = dataclasses.replace(cfg, iscsi=dataclasses.replace(cfg.iscsi, advertise=("site-b:3260",)))
    array = Array(cfg)
    array.address = ("0.0.0.0", 3260)
    info = array.array_info()
    assert info["portal"] == "site-b:3260" and info["listen"] == "0.0.0.0:3260"
    plain = Array(default_config().with_overrides(listen="127.0.0.1:3261", data_dir=str(tmp_path)))
    plain.address = ("127.0.0.1", 3261)
    assert plain.array_info()["portal"] == "127.0.0.1:3261"
