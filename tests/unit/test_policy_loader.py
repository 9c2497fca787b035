"""The policy loader: every mistake is reported as file:line: what, and nothing half-loads."""

from __future__ import annotations

import pytest

from carematrix.policy import PolicyInvalid, load_policy, yamlsrc
from carematrix.policy.loader import load_policy_texts
from carematrix.policy.yamlsrc import LineDict, LineList, YamlSyntaxError, parse_yaml
from tests.paths import DEMO_POLICY_DIR

HOSPITAL = """\
hospital:
  name: Test Hospital
roles:
  announcer: {description: posts notices}
units:
  - id: hosp
    name: Hospital
    children:
      - id: icu
        name: ICU
"""


def errors_of(*files: tuple[str, str]) -> list[str]:
    with pytest.raises(PolicyInvalid) as exc:
        load_policy_texts(list(files))
    return [str(e) for e in exc.value.errors]


def test_shipped_demo_hospital_loads():
    policy = load_policy(DEMO_POLICY_DIR)
    assert policy.room_classes["announcement"].post.roles == {"announcer"}
    announcer = policy.staff_for_localpart("a0001")
    assert announcer is not None and "announcer" in announcer.roles


def test_nested_units_know_their_parent():
    policy = load_policy_texts([("h.yaml", HOSPITAL)])
    assert policy.units["icu"].parent == "hosp"
    assert policy.units["hosp"].parent is None


def test_staff_number_maps_to_a_lowercase_matrix_localpart():
    staff = "staff:\n  - staff_number: N3001\n    name: 刘洋\n    units: [icu]\n    position: nurse\n"
    policy = load_policy_texts([("h.yaml", HOSPITAL), ("s.yaml", staff)])
    assert policy.staff_for_localpart("n3001").name == "刘洋"


def test_yaml_syntax_error_names_the_line():
    errors = errors_of(("h.yaml", HOSPITAL), ("bad.yaml", "staff:\n  - name: [unclosed\n"))
    assert len(errors) == 1 and errors[0].startswith("bad.yaml:") and "invalid YAML" in errors[0]


def _shape(doc):
    """Values, types and every line number of a parsed document."""
    if isinstance(doc, LineDict):
        return ("map", doc.line, doc.key_lines, {k: _shape(v) for k, v in doc.items()})
    if isinstance(doc, LineList):
        return ("list", doc.line, doc.item_lines, [_shape(v) for v in doc])
    return (type(doc).__name__, doc)


YAML_SAMPLES = [
    *(p.read_text(encoding="utf-8") for p in sorted(DEMO_POLICY_DIR.glob("*.yaml"))),
    HOSPITAL + "room_classes:\n  a: {post: {roles: [announcer]}}\n  b:\n    - x\n    - 'y: z'\n",
    "a: 1\nb: 1.5\nc: true\nd: null\ne: ~\nf: 2024-01-02\ng: 0x1f\nh: '007'\n1: one\nno: off\n",
    "list:\n- - nested\n  - [flow, list]\n- {}\n- []\n- |\n  literal\n  text\n",
    "",
    "# only a comment\n",
    "---\nexplicit: document\n...\n",
    # Left to PyYAML's loader (anchors, tags, merge keys), read the same all the same:
    "base: &b {x: 1}\nuse: *b\nmerged:\n  <<: *b\n  y: 2\n",
    "tagged: !!str 123\nset: !!set {a, b}\n",
]


@pytest.mark.parametrize("text", YAML_SAMPLES)
def test_the_fast_reader_reads_every_value_and_line_as_pyyaml_does(text, monkeypatch):
    if "&b" not in text and "!!" not in text:
        yamlsrc._read_plain(text)  # read by the fast reader itself, not handed on
    fast = _shape(parse_yaml(text))
    monkeypatch.setattr(yamlsrc, "LIBYAML", False)  # PyYAML's own parser only
    assert fast == _shape(parse_yaml(text))


@pytest.mark.parametrize("broken", [
    "staff:\n  - name: [unclosed\n    units: x\n",
    "a: 1\na: 2\n",
    "? [complex]\n: key\n",
    "2024-01-01: a date as a key\n",
    "one: doc\n---\ntwo: docs\n",
    "a: b: c\n",
])
def test_errors_read_as_pyyamls_own(broken, monkeypatch):
    with pytest.raises(YamlSyntaxError) as either:
        parse_yaml(broken)
    monkeypatch.setattr(yamlsrc, "LIBYAML", False)
    with pytest.raises(YamlSyntaxError) as pure:
        parse_yaml(broken)
    assert str(either.value) == str(pure.value)


def test_duplicate_key_is_an_error_not_a_silent_override():
    errors = errors_of(("h.yaml", HOSPITAL + "room_classes:\n  a: {}\n  a: {}\n"))
    assert any(e.startswith("h.yaml:13:") and "duplicate key 'a'" in e for e in errors), errors


def test_section_defined_in_two_files():
    errors = errors_of(("h.yaml", HOSPITAL), ("x.yaml", "roles:\n  auditor: {}\n"))
    assert errors == ["x.yaml:1: section 'roles' is already defined in h.yaml:3"]


def test_unknown_unit_role_and_key_are_all_reported_together():
    staff = (
        "staff:\n"
        "  - staff_number: D1\n"
        "    name: Dr A\n"
        "    units: [cardiology]\n"
        "    position: doctor\n"
        "    roles: [chief]\n"
        "    shoe_size: 42\n"
    )
    errors = errors_of(("h.yaml", HOSPITAL), ("s.yaml", staff))
    assert any(e.startswith("s.yaml:4: staff member D1 names unknown unit 'cardiology'") for e in errors)
    assert any(e.startswith("s.yaml:6: staff member D1 has unknown role 'chief'") for e in errors)
    assert any(e.startswith("s.yaml:7: unknown key 'shoe_size' in a staff member") for e in errors)


def test_duplicate_staff_numbers_ignore_case():
    staff = (
        "staff:\n"
        "  - {staff_number: n1, name: A, units: [icu], position: nurse}\n"
        "  - {staff_number: N1, name: B, units: [icu], position: nurse}\n"
    )
    errors = errors_of(("h.yaml", HOSPITAL), ("s.yaml", staff))
    assert errors == ["s.yaml:3: staff number 'N1' is used twice (first at line 2)"]


def test_room_class_must_name_declared_roles_and_known_staff():
    rooms = "room_classes:\n  announcement:\n    post:\n      roles: [announcers]\n      staff: [X9]\n"
    errors = errors_of(("h.yaml", HOSPITAL), ("r.yaml", rooms))
    assert any(e.startswith("r.yaml:4:") and "unknown role 'announcers'" in e for e in errors)
    assert any(e.startswith("r.yaml:5:") and "unknown staff number 'X9'" in e for e in errors)


def test_missing_hospital_section():
    errors = errors_of(("r.yaml", "room_classes: {}\n"))
    assert errors == ["r.yaml:1: no 'hospital' section in any policy file"]


def test_missing_directory(tmp_path):
    with pytest.raises(PolicyInvalid) as exc:
        load_policy(tmp_path / "nope")
    assert "policy directory does not exist" in str(exc.value)


def test_digest_changes_with_content_only():
    a = load_policy_texts([("h.yaml", HOSPITAL)])
    b = load_policy_texts([("h.yaml", HOSPITAL)])
    c = load_policy_texts([("h.yaml", HOSPITAL.replace("Test Hospital", "Other"))])
    assert a.digest == b.digest != c.digest


def test_a_list_or_mapping_where_a_name_belongs_is_reported_with_its_line():
    """An indentation slip turns a role name into a list or mapping; the check must report it
    (a crash would stop `carematrix policy check` and leave a reload unexplained)."""
    oncall = (
        "oncall:\n  timezone: UTC\n  roles:\n"
        "    icu/nurse: {unit: icu, name: Nurse, escalation: [{to: oncall, timeout: 2m}]}\n"
        "  feeds:\n"
        "    - {id: r, kind: csv, path: r.csv, roles: {Nurse: [icu/nurse]}}\n"
    )
    clinical = (
        "clinical:\n"
        "  senders: [HIS]\n"
        "  wards:\n"
        "    ICU: {unit: icu, roles: {nurse: {id: icu/nurse}}}\n"
        "  rules:\n"
        "    - {when: critical_result, page: [nurse], priority: critical}\n"
        "  safety_net: {'*': [icu/nurse]}\n"
        "  integration_room: integration\n"
        "  cases:\n"
        "    consult_orders: {CONS-ICU: [{unit: icu}]}\n"
    )
    errors = errors_of(("h.yaml", HOSPITAL), ("o.yaml", oncall), ("c.yaml", clinical))
    for expected in (
        "c.yaml:4: 'roles.nurse' of ward 'ICU' must name an on-call role, got a mapping",
        "c.yaml:7: safety net for '*' must name an on-call role, got a list",
        "c.yaml:10: consult order 'CONS-ICU' must list unit IDs, got a mapping",
        "o.yaml:6: 'roles' of roster feed 'r': 'Nurse' must map to a role address, got a list",
    ):
        assert expected in errors
