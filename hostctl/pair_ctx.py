"""What every pair command is handed (:class:`Ctx`) and the small readers of response data they
share, kept apart so each command module depends on these and not on one another."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TextIO

from .client import Host


@dataclass
class Ctx:
    host: Host
    timeout: float
    out: TextIO
    err: TextIO
    json: bool

    def print_json(self, data: Any) -> None:
        self.out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _data(resp: Any) -> dict[str, Any]:
    return resp.data if isinstance(resp.data, dict) else {}


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def find_group(data: dict[str, Any], group: str) -> dict[str, Any] | None:
    for g in data.get("groups") or []:
        if isinstance(g, dict) and g.get("group") == group:
            return g
    return None
