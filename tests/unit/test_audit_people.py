"""The audit search's person filter: a name, a staff number or a Matrix ID."""

from __future__ import annotations

import pytest

from carematrix.audit.people import actor_names, resolve_actor
from carematrix.audit.search import AuditQueryInvalid
from carematrix.policy.org import Staff


def person(number: str, name: str) -> Staff:
    return Staff(number, name, ("cardiology",), "doctor", "", frozenset())


STAFF = (person("D1001", "李伟 Li Wei"), person("N3001", "刘洋 Liu Yang"), person("D1009", "李伟 Li Wei"),
         person("P5001", "何丽 He Li"), person("A0002", "郑洁"))


def test_one_person_by_name_staff_number_or_id():
    only = STAFF[1:]
    for typed in ("李伟", "Li Wei", "liwei", " LI WEI ", "D1009", "d1009"):
        assert resolve_actor(typed, only, "h.example") == "@d1009:h.example", typed
    assert resolve_actor("刘洋", STAFF, "h.example") == "@n3001:h.example"
    assert resolve_actor("郑洁", STAFF, "h.example") == "@a0002:h.example"
    # a Matrix ID or anonymous as given: leavers keep their records under their ID
    assert resolve_actor("@x9999:h.example", STAFF, "h.example") == "@x9999:h.example"
    assert resolve_actor("anonymous", STAFF, "h.example") == "anonymous"


def test_a_staff_number_wins_over_a_name_holding_it():
    staff = (person("LI", "Somebody"), person("D1", "李伟 Li Wei"))
    assert resolve_actor("li", staff, "h") == "@li:h"


def test_a_shared_name_lists_who_it_could_be():
    with pytest.raises(AuditQueryInvalid) as raised:
        resolve_actor("李伟", STAFF, "h.example")
    assert "names 2 people" in str(raised.value)
    assert "D1001" in str(raised.value) and "D1009" in str(raised.value) and "staff number" in str(raised.value)
    with pytest.raises(AuditQueryInvalid, match="names 4 people"):
        resolve_actor("li", STAFF, "h.example")  # 李伟 twice, 刘洋 Liu, 何丽 He Li


def test_nobody_is_said_not_searched():
    with pytest.raises(AuditQueryInvalid, match="Nobody on the staff list is named or numbered '王五'"):
        resolve_actor("王五", STAFF, "h.example")


def test_result_rows_name_local_staff_only():
    names = actor_names(["@d1001:h.example", "@d1001:other.example", "anonymous"], STAFF, "h.example")
    assert names == {"@d1001:h.example": "李伟 Li Wei"}
