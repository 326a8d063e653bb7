"""remote.max_unauthenticated and remote.handshake_timeout: defaults, values, range checks."""

from __future__ import annotations

from typing import Any

import pytest

from storaged.config import ConfigError, RemoteConfig, parse_config


def remote(**kw: Any) -> RemoteConfig:
    data = {"array": {"name": "a", "data_dir": "./d"}, "iscsi": {"listen": "127.0.0.1:3260"},
            "targets": [{"name": "iqn.2026-11.io.storaged:t", "luns": [{"lun": 0, "file": "x.img", "size": "1MiB"}]}],
            "remote": {"listen": "127.0.0.1:0", **kw}}
    return parse_config(data, "<embedded>").remote


def test_defaults() -> None:
    rc = remote()
    assert (rc.max_unauthenticated, rc.handshake_timeout) == (16, 10.0)


def test_values() -> None:
    rc = remote(max_unauthenticated=4, handshake_timeout=3)
    assert (rc.max_unauthenticated, rc.handshake_timeout) == (4, 3.0)


@pytest.mark.parametrize("kw", [{"max_unauthenticated": 0}, {"max_unauthenticated": "many"},
                                {"handshake_timeout": 0.1}, {"handshake_timeout": 1000}])
def test_out_of_range_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kw))):
        remote(**kw)
