"""The pair state table as documented (docs/replication.md "Pair states"), kept here as data so the
simulator checks the code against the document, not against itself.

A side's state is (role, state); SMPL has no role. FENCED (a primary whose host writes are
stopped: the peer took over, or its role is not confirmed after a restart) is the primary-side
state the table gained with the fence.
"""

from __future__ import annotations

TRANSITIONS: frozenset[tuple[str, str]] = frozenset({
    ("SMPL", "COPY"),
    ("COPY", "PAIR"), ("PAIR", "COPY"),  # paircreate of one more pair in the group
    ("PAIR", "PSUS"), ("COPY", "PSUS"),
    ("PAIR", "PSUE"), ("COPY", "PSUE"), ("PSUS", "PSUE"),
    ("PSUS", "COPY"), ("PSUE", "COPY"),
    ("PAIR", "SSWS"), ("PSUE", "SSWS"), ("PSUS", "SSWS"),
})
PRIMARY_FENCE: frozenset[str] = frozenset({"COPY", "PAIR", "PSUS", "PSUE"})


def allowed_transition(old: tuple[str, str], new: tuple[str, str]) -> bool:
    (orole, ostate), (nrole, nstate) = old, new
    if nstate == "SMPL" or ostate == "SMPL" and nstate == "COPY":
        return True
    if nstate == "SSWS" and nrole != "secondary" or nstate == "FENCED" and nrole != "primary":
        return False
    if orole == nrole:
        if nrole == "primary" and (nstate == "FENCED" and ostate in PRIMARY_FENCE
                                   or ostate == "FENCED" and nstate in PRIMARY_FENCE):
            return True
        return (ostate, nstate) in TRANSITIONS
    if orole == "secondary" and nrole == "primary":  # swap, or the SSWS side's reverse resync
        return (ostate, nstate) in (("PAIR", "PAIR"), ("SSWS", "COPY"))
    if orole == "primary" and nrole == "secondary":  # the old primary's side of the same
        return nstate == "PAIR" and ostate in ("PAIR", "FENCED") or \
            nstate == "COPY" and ostate in ("PAIR", "PSUS", "PSUE", "COPY", "FENCED")
    return False
