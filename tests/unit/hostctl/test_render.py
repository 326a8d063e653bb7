"""Human-readable output: sizes, aligned tables, tolerant renderers."""

from __future__ import annotations

import pytest

from hostctl.render import human_size, links_table, luns_table, render_info, render_raw, table

from .conftest import site_info


@pytest.mark.parametrize(
    "n,text",
    [
        (0, "0 B"),
        (512, "512 B"),
        (1536, "1.5 KiB"),
        (16 << 20, "16 MiB"),
        (1 << 30, "1 GiB"),
        (int(2.25 * (1 << 40)), "2.2 TiB"),
        (None, "-"),
        ("big", "big"),
    ],
)
def test_human_size(n: object, text: str) -> None:
    assert human_size(n) == text


def test_table_alignment() -> None:
    out = table(["A", "NUMBER", "C"], [["x", 1, None], ["longer", 12345, True]], right=(1,))
    assert out.splitlines() == [
        "A       NUMBER  C",
        "x            1  -",
        "longer   12345  yes",
    ]


def test_luns_table() -> None:
    lines = luns_table(site_info()["luns"]).splitlines()
    assert lines[0].split() == ["LUN", "TYPE", "SIZE", "THIN", "MAP"]
    assert lines[1].split() == ["0", "data", "1", "GiB", "yes", "-"]
    assert lines[3].endswith("site-b lun 2 (online, command device)")
    # all rows the same width up to the MAP column
    assert len({line.index(line.split()[-1]) for line in lines[1:2]}) == 1


def test_luns_table_shows_targets_when_there_are_several() -> None:
    luns = [{"target": "t1", "lun": 0, "type": "data", "size": 1}, {"target": "t2", "lun": 0, "type": "data"}]
    assert luns_table(luns).splitlines()[0].split()[0] == "TARGET"


def test_links_table_tolerates_other_field_names() -> None:
    out = links_table(
        [
            {"name": "site-b", "connected": True, "rtt": 0.0021, "reconnects": 2},
            {"peer": "site-c", "state": "down", "since": "2026-11-26T01:00:00Z", "last_error": "auth failed"},
        ]
    )
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["site-b", "up"] and "2.10 ms" in lines[1]
    assert "2026-11-26T01:00:00Z" in lines[2] and lines[2].endswith("auth failed")


def test_render_info_sections_and_unknown_fields() -> None:
    info = site_info()
    info["extra"] = "kept"
    out = render_info(info)
    assert out.splitlines()[:5] == [
        "array    site-a",
        "version  0.1.0",
        "uuid     0f0e0d0c-0000-4000-8000-000000000001",
        "uptime   12.5s",
        "portal   127.0.0.1:3260",
    ]
    assert "extra    kept" in out
    lun_map = out.split("LUN map\n")[1].split("\n\n")[0].splitlines()
    assert lun_map[0].split() == ["TARGET", "LUN", "ARRAY", "REMOTE", "LUN", "STATE"]
    assert lun_map[1].split()[1:] == ["3", "site-b", "2", "online"]
    assert render_info({"array": "x"}) == "array    x\nversion  -\nuuid     -"


def test_render_raw() -> None:
    out = render_raw(
        {
            "array": "site-a",
            "process": 1,
            "process_name": "ECHO",
            "slot": 3,
            "state": "DONE",
            "tag": "00000000000000ff",
            "status": "OK",
            "error": "",
            "data": {"a": 1},
            "elapsed_ms": 1.25,
        }
    )
    assert "process  ECHO (1)" in out and "elapsed  1.2 ms" in out or "elapsed  1.3 ms" in out
    assert out.endswith('data\n{\n  "a": 1\n}')


def test_pairdisplay_says_when_the_s_vols_are_not_consistent() -> None:
    """A group left PSUE by an interrupted copy shows 100% per pair (the copy is not running);
    pairdisplay must say the S-VOLs are not consistent (takeover refuses them)."""
    from hostctl.render import pair_group_text

    group = {"group": "g1", "role": "secondary", "peer": "site-a", "state": "PSUE", "error": "",
             "svol_consistent": False,
             "pairs": [{"pvol": "site-a:0", "svol": "site-b:0", "state": "PSUE", "copy_percent": 100.0}]}
    text = pair_group_text(group, "site-b")
    assert "inconsistent" in text and "pairresync" in text
    assert "inconsistent" not in pair_group_text({**group, "svol_consistent": True, "state": "PAIR"}, "site-b")
