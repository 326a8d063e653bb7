"""libiscsi's conformance suite (iscsi-test-cu -d, family ALL) against a live storaged.

Every test must pass or be skipped; a skip is only acceptable for the reasons listed in
ALLOWED_SKIPS (things that cannot apply to this target or this CI), each with why.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import TARGET, require
from .daemon import StoragedProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: skip messages (regex) we accept, with the reason they cannot run here
ALLOWED_SKIPS = {
    r"--allow-sanitize flag is not set": "SANITIZE erases the LUN; storaged does not implement it",
    r"Logical unit is not removable|Media is not removable": "data LUNs are fixed disks, not removable media",
    r"Logical unit is not write-protected": "the scratch LUN must be writable for the -d tests",
    r"LBPPB < 2": "LUNs report one logical block per physical block, so that unmapping a single LBA "
    "deallocates it (GetLBAStatus.UnmapSingle); the unaligned-unmap tests need LBPPB >= 2",
}

_SUITE = re.compile(r"^Suite: (\S+)", re.M)
_TEST = re.compile(r"^  Test: (\S+) \.\.\.", re.M)


def parse(output: str) -> dict[str, tuple[str, str]]:
    """Map 'Suite.Test' -> (pass|skip|fail, message) from verbose iscsi-test-cu output.

    Each test's text runs from its "Test: X ..." line to the next test, suite or summary; CUnit
    ends it with "passed" or "FAILED", and libiscsi marks skips with "[SKIPPED] reason".
    """
    marks = sorted([(m.start(), "suite", m.group(1), m.end()) for m in _SUITE.finditer(output)]
                   + [(m.start(), "test", m.group(1), m.end()) for m in _TEST.finditer(output)])
    summary = output.find("Run Summary:")
    results: dict[str, tuple[str, str]] = {}
    suite = ""
    for i, (pos, kind, name, end) in enumerate(marks):
        if kind == "suite":
            suite = name
            continue
        stop = marks[i + 1][0] if i + 1 < len(marks) else (summary if summary > pos else len(output))
        body = output[end:stop]
        # CUnit's verdict starts a line (or follows "..." directly); "[FAILED]" text printed by the
        # next suite's set-up after the verdict is not this test's result
        verdict = re.search(r"(?:^|\n)\s*(passed|FAILED)(?![A-Za-z\]])", body)
        if verdict is None or verdict.group(1) == "FAILED":
            fail = re.search(r"\[FAILED\]\s*(.*)", body)
            results[f"{suite}.{name}"] = ("fail", fail.group(1) if fail else body.strip()[-300:])
        elif skip := re.search(r"\[SKIPPED\]\s*(.*)", body):
            results[f"{suite}.{name}"] = ("skip", skip.group(1).strip())
        else:
            results[f"{suite}.{name}"] = ("pass", "")
    return results


def test_libiscsi_conformance_suite(tmp_path: Path) -> None:
    require("iscsi-test-cu")
    cfg = {"array": {"name": "conformance"},
           "targets": [{"name": TARGET, "luns": [{"lun": 0, "size": "1GiB", "file": "lun0.img"}]}]}
    proc = StoragedProcess(tmp_path / "data", cfg).start()
    try:
        url = proc.url(TARGET, 0)
        run = subprocess.run(["iscsi-test-cu", "-d", "-v", "-t", "ALL", url, url],
                             capture_output=True, text=True, timeout=1200)
        (tmp_path / "iscsi-test-cu.log").write_text(run.stdout + run.stderr)
    finally:
        proc.stop()
    results = parse(run.stdout)
    assert len(results) >= 200, f"suite did not run fully ({len(results)} tests):\n{run.stdout[-2000:]}"
    failed = {k: v[1] for k, v in results.items() if v[0] == "fail"}
    bad_skips = {k: v[1] for k, v in results.items()
                 if v[0] == "skip" and not any(re.search(p, v[1]) for p in ALLOWED_SKIPS)}
    passed = sum(1 for v in results.values() if v[0] == "pass")
    print(f"libiscsi: {passed} passed, {len(failed)} failed, "
          f"{sum(1 for v in results.values() if v[0] == 'skip')} skipped")
    assert not failed, f"failing conformance tests: {failed}"
    assert not bad_skips, f"skipped for reasons we do not accept: {bad_skips}"
    assert "Traceback" not in proc.log


def test_parser_tells_pass_skip_and_fail_apart() -> None:
    sample = (
        "Suite: Read10\n"
        "  Test: Simple ...passed\n"
        "  Test: BeyondEol ...    [FAILED] READ10 should have failed\n"
        "FAILED\n"
        "    1. test_read10_beyond_eol.c:42  - CU_ASSERT\n"
        "Suite: PreventAllow\n"
        "  Test: Eject ...    [SKIPPED] Logical unit is not removable.\n"
        "passed\n"
        "  Test: Logout ...passed\n"
        "    [FAILED] PRIN command: failed with sense (printed by the next suite's set-up)\n"
        "Run Summary:    Type  Total\n"
    )
    assert parse(sample) == {
        "Read10.Simple": ("pass", ""),
        "Read10.BeyondEol": ("fail", "READ10 should have failed"),
        "PreventAllow.Eject": ("skip", "Logical unit is not removable."),
        "PreventAllow.Logout": ("pass", ""),
    }
