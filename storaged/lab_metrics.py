"""What the lab shows of each array's Prometheus endpoint after the replication demo.

The lab's arrays serve ``/metrics`` (``metrics.listen`` in configs/site-*.yaml); after the pair has
replicated, the lab prints the few series an operator looks at first, so the numbers can be checked
against what the demo did (16 MiB written to site-a LUN 0, link up, the group's lag on both arrays).
"""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

SHOWN = ("storaged_lun_write_bytes_total", "storaged_link_up", "storaged_group_rpo_seconds",
         "storaged_journal_used_ratio", "storaged_journal_entries_behind")


def metrics_url(config: Path) -> str | None:
    """The /metrics URL of the array described by ``config``, or None when metrics are off."""
    listen = ((yaml.safe_load(config.read_text()) or {}).get("metrics") or {}).get("listen")
    if not listen:
        return None
    host, _, port = str(listen).rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}/metrics"


def scrape(url: str, timeout: float = 5.0) -> list[str]:
    """The lines ``name{labels} value`` of the SHOWN families (LUN series only for LUN 0, the P-VOL)."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (the lab's own loopback URL)
        text = reply.read().decode()
    lines = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in SHOWN:
                continue
            if sample.name.startswith("storaged_lun_") and sample.labels.get("lun") != "0":
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            value = int(sample.value) if float(sample.value).is_integer() else round(sample.value, 3)
            lines.append(f"{sample.name}{{{labels}}} {value}")
    return lines


def show(name: str, config: Path, group: str = "lab", patience: float = 10.0) -> int:
    """Print the SHOWN series of one array; 0 when shown or metrics are off, 1 when the scrape failed.

    A secondary's group series need an answer from the primary within the scrape; a busy machine
    can miss it once, so the scrape is repeated (up to ``patience`` s) until the group shows."""
    url = metrics_url(config)
    if url is None:
        return 0
    print(f"\n$ curl -s {url}   # {name}: a few of the series", flush=True)
    wanted = f'storaged_group_rpo_seconds{{group="{group}"}}'
    deadline = time.monotonic() + patience
    try:
        lines = scrape(url)
        while not any(line.startswith(wanted) for line in lines) and time.monotonic() < deadline:
            time.sleep(0.5)
            lines = scrape(url)
    except (OSError, ValueError) as exc:  # no answer, or not the Prometheus text format
        print(f"storaged-lab: {name}'s metrics at {url} could not be read: {exc}", file=sys.stderr, flush=True)
        return 1
    print("\n".join(lines), flush=True)
    return 0
