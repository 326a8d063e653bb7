"""The reload plan on its own: old config + new config + facts of the running array -> what applies,
what is refused (and then nothing applies), what waits for a restart. No sockets, no daemon."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from storaged.array.reload_plan import Facts, ReloadPlan, make_plan
from storaged.config import ArrayConfig, parse_config

T = "iqn.2026-11.io.storaged:t"
T2 = "iqn.2026-11.io.storaged:t2"
SECRET = "sixteen-chars-secret"


def base() -> dict[str, Any]:
    return {
        "array": {"name": "a", "data_dir": "/nonexistent-reload-test"},
        "iscsi": {"listen": "127.0.0.1:3260"},
        "remote": {"listen": "127.0.0.1:3300", "peers": [{"name": "b", "address": "127.0.0.1:3301", "secret": SECRET}]},
        "targets": [{"name": T, "luns": [{"lun": 0, "size": "64MiB"}, {"lun": 1, "size": "16MiB"}]}],
    }


def cfg(data: dict[str, Any]) -> ArrayConfig:
    return parse_config(copy.deepcopy(data), "/etc/storaged/a.yaml")


def plan(old: dict[str, Any], new: dict[str, Any], facts: Facts | None = None) -> ReloadPlan:
    growable = frozenset((t["name"], lun["lun"]) for t in old["targets"] for lun in t["luns"])
    return make_plan(cfg(old), cfg(new), facts or Facts(growable=growable), check=lambda c, lun: None)


def test_identical_config_plans_nothing() -> None:
    p = plan(base(), base())
    assert p.empty and not p.refused and not p.restart


def test_added_lun_and_grown_lun() -> None:
    new = base()
    new["targets"][0]["luns"][1]["size"] = "32MiB"
    new["targets"][0]["luns"].append({"lun": 2, "size": "8MiB"})
    p = plan(base(), new)
    assert not p.refused
    assert [(t.name, lun.lun) for t, lun in p.added_luns] == [(T, 2)]
    assert [(o.size, n.size) for _t, o, n in p.grown] == [(16 << 20, 32 << 20)]
    assert p.changes() == [f"LUN 2 of {T} added (data, 8 MiB, lun2.img)", f"LUN 1 of {T} grown 16 MiB -> 32 MiB"]


def test_shrink_is_refused_naming_the_field() -> None:
    new = base()
    new["targets"][0]["luns"][0]["size"] = "32MiB"
    new["targets"][0]["luns"].append({"lun": 2, "size": "8MiB"})
    p = plan(base(), new)
    assert p.refused == [(f"targets[0].luns[0].size: LUN 0 of {T}: cannot shrink from 64 MiB to 32 MiB "
                          "(hosts may hold data past the new end)")]


@pytest.mark.parametrize("facts, reason", [
    (Facts(paired={(T, 1): "g1"}), "paired (journal group g1)"),
    (Facts(sessions={T: 2}), f"in use: 2 session(s) logged in to {T}"),
    (Facts(reserved=frozenset({(T, 1)})), "reserved"),
    (Facts(peer_users={(T, 1): frozenset({"b"})}), "used over the remote link by b"),
])
def test_removing_a_lun_in_use_is_refused(facts: Facts, reason: str) -> None:
    new = base()
    del new["targets"][0]["luns"][1]
    p = plan(base(), new, facts)
    assert len(p.refused) == 1 and p.refused[0].startswith(f"LUN 1 of {T}: cannot remove: {reason}"), p.refused


def test_removing_an_unused_lun_is_planned() -> None:
    new = base()
    del new["targets"][0]["luns"][1]
    p = plan(base(), new, Facts(sessions={T2: 1}, paired={(T, 0): "g"}))
    assert not p.refused and [lun.lun for _t, lun in p.removed_luns] == [1]


def test_growing_a_paired_or_wrapped_lun_is_refused() -> None:
    new = base()
    new["targets"][0]["luns"][0]["size"] = "128MiB"
    p = plan(base(), new, Facts(paired={(T, 0): "g1"}, growable=frozenset({(T, 0)})))
    assert p.refused and "cannot grow: paired (journal group g1)" in p.refused[0] and not p.grown
    p = plan(base(), new, Facts())
    assert p.refused and "not a plain file" in p.refused[0]


@pytest.mark.parametrize("key, value, fieldname", [
    ("file", "other.img", "file"),
    ("block_size", 4096, "block_size"),
    ("serial", "S123", "serial"),
    ("read_only", True, "read_only"),
])
def test_changing_a_served_luns_identity_or_backing_is_refused(key: str, value: object, fieldname: str) -> None:
    new = base()
    new["targets"][0]["luns"][1][key] = value
    p = plan(base(), new)
    assert len(p.refused) == 1 and p.refused[0].startswith(f"targets[0].luns[1].{fieldname}: LUN 1 of {T}: ")


def test_a_new_luns_file_may_not_be_one_this_reload_removes() -> None:
    new = base()
    new["targets"][0]["luns"][1] = {"lun": 5, "size": "16MiB", "file": "lun1.img"}
    p = plan(base(), new)
    assert any(r.startswith(f"targets[0].luns[1].file: LUN 5 of {T}: lun1.img belongs") for r in p.refused)


def test_new_lun_file_check_result_is_a_refusal(tmp_path: Path) -> None:
    new = base()
    new["targets"][0]["luns"].append({"lun": 2, "size": "8MiB"})
    p = make_plan(cfg(base()), cfg(new), Facts(), check=lambda c, lun: ("size", "too big already"))
    assert p.refused == [f"targets[0].luns[2].size: LUN 2 of {T}: too big already"]


def test_acl_and_chap_changes_are_live_portal_group_tag_is_refused() -> None:
    new = base()
    new["targets"][0]["initiators"] = ["iqn.2026-11.test:h1"]
    new["targets"][0]["chap"] = {"username": "u", "secret": "twelve-chars-ok"}
    p = plan(base(), new)
    assert not p.refused and p.access == {T: ["initiators", "chap"]}
    new["targets"][0]["portal_group_tag"] = 2
    assert plan(base(), new).refused[0].startswith("targets[0].portal_group_tag: ")


def test_targets_added_and_removed_and_first_target_pinned() -> None:
    two = base()
    two["targets"].append({"name": T2, "luns": [{"lun": 0, "size": "8MiB", "file": "t2.img"}]})
    p = plan(base(), two)
    assert not p.refused and [t.name for t in p.added_targets] == [T2]
    assert [(t.name, lun.lun) for t, lun in p.added_luns] == [(T2, 0)]
    p = plan(two, base())
    assert not p.refused and [t.name for t in p.removed_targets] == [T2]
    assert plan(two, base(), Facts(sessions={T2: 1})).refused  # someone is logged in to it
    swapped = copy.deepcopy(two)
    swapped["targets"].reverse()
    assert plan(two, swapped).refused[0].startswith("targets[0].name: the first target would change")


def test_peers_added_changed_removed_and_removal_of_a_paired_peer_refused() -> None:
    new = base()
    new["remote"]["peers"] = [{"name": "b", "address": "127.0.0.1:4301", "secret": SECRET + "x"},
                              {"name": "c", "address": "127.0.0.1:3302", "secret": SECRET}]
    p = plan(base(), new)
    assert not p.refused
    assert [x.name for x in p.added_peers] == ["c"]
    assert [(x.name, what) for x, what in p.changed_peers] == [("b", ["address", "secret"])]
    assert "peer b: address, secret (next connection)" in p.changes()
    gone = base()
    gone["remote"]["peers"] = []
    assert [x.name for x in plan(base(), gone).removed_peers] == ["b"]
    refused = plan(base(), gone, Facts(group_peers={"b": ("g1",)})).refused
    assert refused == ["remote.peers: cannot remove peer b: journal group(s) g1 are paired with it"]


def test_process_wide_settings_need_a_restart_and_stay_as_they_are() -> None:
    new = base()
    new["array"]["name"] = "renamed"
    new["iscsi"]["listen"] = "0.0.0.0:3260"
    new["iscsi"]["queue_depth"] = 64
    new["replication"] = {"interval": 1}
    new["targets"][0]["luns"].append({"lun": 2, "size": "8MiB"})
    p = plan(base(), new)
    assert not p.refused and len(p.added_luns) == 1
    assert p.restart == ["array.name: 'a' -> 'renamed'", "iscsi.listen: '127.0.0.1:3260' -> '0.0.0.0:3260'",
                         "iscsi.queue_depth: 128 -> 64", "replication.interval: 0.2 -> 1.0"]
    eff = p.new
    assert (eff.name, eff.iscsi.listen, eff.iscsi.queue_depth, eff.replication.interval) == (
        "a", "127.0.0.1:3260", 128, 0.2)
    assert len(eff.targets[0].luns) == 3  # the live part is the new config's


def test_live_iscsi_login_settings_and_no_secret_in_messages() -> None:
    new = base()
    new["iscsi"]["advertise"] = ["10.0.0.1:3260"]
    new["iscsi"]["discovery_chap"] = {"username": "d", "secret": "twelve-chars-ok"}
    new["remote"]["io_timeout"] = 5
    p = plan(base(), new)
    assert p.portal == ["advertise", "discovery_chap"] and p.new.iscsi.advertise == ("10.0.0.1:3260",)
    assert p.restart == ["remote.io_timeout: 10.0 -> 5.0"]
    assert "twelve-chars-ok" not in " ".join(p.changes() + p.restart)
