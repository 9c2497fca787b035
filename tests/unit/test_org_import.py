"""HR CSV import: mapped columns, every bad row reported as file:line, nothing half-written."""

from __future__ import annotations

import yaml

from carematrix.org.importer import import_staff, parse_mapping
from carematrix.policy import load_policy
from carematrix.policy.loader import load_policy_texts
from tests.paths import DEMO_POLICY_DIR

POLICY = load_policy(DEMO_POLICY_DIR)
HR = "工号,姓名,科室,岗位,职称,角色\nN9001,钱红 Qian Hong,icu,nurse,护师 Nurse,\nD9001,孙强 Sun Qiang,cardiology;icu,doctor,主治医师,announcer\n"
MAPPING = parse_mapping(["staff_number=工号", "name=姓名", "units=科室", "position=岗位", "title=职称", "roles=角色"])


def test_hr_export_becomes_the_staff_policy():
    result = import_staff("hr.csv", HR, MAPPING, POLICY)
    assert result.errors == []
    data = yaml.safe_load(result.yaml())
    assert data["staff"][1] == {
        "staff_number": "D9001", "name": "孙强 Sun Qiang", "units": ["cardiology", "icu"],
        "position": "doctor", "title": "主治医师", "roles": ["announcer"],
    }
    # The generated file is a valid policy section together with the rest of the policy.
    hospital = (DEMO_POLICY_DIR / "hospital.yaml").read_text()
    policy = load_policy_texts([("hospital.yaml", hospital), ("staff.yaml", result.yaml())])
    assert policy.staff_for_localpart("n9001").name == "钱红 Qian Hong"


def test_bad_rows_are_all_reported_with_their_line_and_nothing_is_produced():
    bad = HR + "N9001,Dup,icu,nurse,,\nX 1,Space,icu,nurse,,\nN9002,No Unit,,nurse,,\nN9003,Wrong,nowhere,nurse,,chief\n"
    result = import_staff("hr.csv", bad, MAPPING, POLICY)
    assert result.staff == []
    messages = [str(e) for e in result.errors]
    assert "hr.csv:4: staff number 'N9001' is used twice (first at line 2)" in messages
    assert "hr.csv:5: staff number 'X 1' may only use letters, digits, '.', '_' and '-'" in messages
    assert "hr.csv:6: staff member N9002 has no unit (column 科室)" in messages
    assert "hr.csv:7: staff member N9003 names unknown unit 'nowhere'" in messages
    assert "hr.csv:7: staff member N9003 has unknown role 'chief'" in messages


def test_missing_mapped_column_is_named():
    result = import_staff("hr.csv", "id,name\n1,A\n", parse_mapping([]), POLICY)
    assert str(result.errors[0]).startswith("hr.csv:1: missing column(s) staff_number, units, position")
