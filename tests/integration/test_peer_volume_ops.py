"""COMPARE AND WRITE and zeroing through a virtual volume: site-a's LUN 4 forwards them over the
remote link to site-b's LUN 1, where storaged/array/volumes.py runs them through the LU's
range-tracked methods. libiscsi's own tests (iscsi-test-cu) are the initiator."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import require
from .sites import Sites, iqn, start_sites
from .test_conformance import ALLOWED_SKIPS, parse

pytestmark = pytest.mark.integration


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    s = start_sites(tmp_path)
    try:
        assert s.linked(), s.a.log[-3000:] + s.b.log[-3000:]
        yield s
    finally:
        s.stop()


@pytest.mark.parametrize("family", ["SCSI.CompareAndWrite", "SCSI.WriteSame16", "SCSI.Unmap"])
def test_libiscsi_family_passes_on_a_virtual_volume(sites: Sites, tmp_path: Path, family: str) -> None:
    require("iscsi-test-cu")

    url = sites.a.url(iqn("site-a"), 4)
    run = subprocess.run(["iscsi-test-cu", "-d", "-v", "-t", family, url, url], check=False, capture_output=True,
                         text=True, timeout=600)
    (tmp_path / "iscsi-test-cu.log").write_text(run.stdout + run.stderr)
    results = parse(run.stdout)
    assert results, run.stdout[-2000:] + run.stderr[-2000:]
    failed = {k: v[1] for k, v in results.items() if v[0] == "fail"}
    bad_skips = {k: v[1] for k, v in results.items()
                 if v[0] == "skip" and not any(re.search(p, v[1]) for p in ALLOWED_SKIPS)}
    assert not failed, failed
    assert not bad_skips, bad_skips
    assert any(v[0] == "pass" for v in results.values()), results
    for log in (sites.a.log, sites.b.log):
        assert "Traceback" not in log
