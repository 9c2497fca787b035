"""The pinned patient summary as the room shows it: plain body and Matrix HTML."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from appservice.clinical.summary import (
    NO_ALLERGIES_TEXT,
    WORDS,
    PatientSummary,
    format_summary,
    lab_severity,
)


def summary(**kw) -> PatientSummary:
    fields = dict(
        patient_id="P20261101",
        name="王建国",
        gender="male",
        birth_date="1958-03-14",
        encounters=["2026-11-20 住院 · 心内科 5A (in-progress)"],
        problems=["急性ST段抬高型心肌梗死 [I21.0] · since 2026-11-20"],
        allergies=["青霉素 (medication allergy) · criticality high · reaction: 过敏性休克 (severe)"],
        labs=[
            "Potassium 6.8 mmol/L [HH] 2026-11-25 08:10",
            "Creatinine 132 umol/L [H] 2026-11-25 08:10",
            "Sodium 138 mmol/L 2026-11-25 08:10",
        ],
    )
    fields.update(kw)
    return PatientSummary(**fields)


class TagCollector(HTMLParser):
    """Parses the formatted body the way a client would, collecting tags and visible text."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.hrefs += [v for k, v in attrs if k == "href"]

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> TagCollector:
    collector = TagCollector()
    collector.feed(html)
    collector.close()
    return collector


def section(text: str, heading: str) -> list[str]:
    lines = text.split("\n")
    start = lines.index(WORDS.get(heading, heading)) + 1
    out = []
    for line in lines[start:]:
        if not line.strip():
            break
        out.append(line)
    return out


def test_plain_body_has_every_section_in_order():
    text, _ = format_summary(summary())
    headings = ["Demographics", "Encounters", "Active problems", "Allergies", "Recent labs"]
    positions = [text.split("\n").index(WORDS[h]) for h in headings]
    assert positions == sorted(positions)
    assert text.startswith("患者摘要 Patient summary: 王建国 (P20261101)")
    assert "  出生日期 Born: 1958-03-14" in text
    assert all(WORDS[h].endswith(" " + h) for h in headings)  # Chinese first, the English beside it
    assert "  - 2026-11-20 住院 · 心内科 5A (in-progress)" in text


def test_html_uses_headings_lists_and_strong():
    _, html = format_summary(summary())
    tags = parse(html).tags
    assert "h4" in tags and "ul" in tags and "li" in tags and "strong" in tags
    assert tags.count("ul") == 5  # one list per non-empty section


def test_critical_and_abnormal_labs_are_marked_in_words_and_colour():
    text, html = format_summary(summary())
    labs = section(text, "Recent labs")
    assert labs[0].endswith("!! 危急 CRITICAL")
    assert labs[1].endswith("! 异常 abnormal")
    assert labs[2] == "  - Sodium 138 mmol/L 2026-11-25 08:10"  # normal: unmarked
    assert re.search(r'<strong><span data-mx-color="#[0-9a-f]{6}">Potassium 6\.8 mmol/L \[HH\]'
                     r"[^<]*— 危急 CRITICAL</span></strong>", html)
    assert re.search(r'<span data-mx-color="#[0-9a-f]{6}">Creatinine[^<]*— 异常 abnormal</span>', html)
    assert "<li>Sodium 138 mmol/L 2026-11-25 08:10</li>" in html


@pytest.mark.parametrize(
    ("line", "severity"),
    [
        ("Potassium 6.8 mmol/L [HH] 2026-11-25 08:10", "critical"),
        ("Sodium 118 mmol/L [LL] 2026-11-25 08:10", "critical"),
        ("Blood culture positive [AA]", "critical"),
        ("Glucose 11.2 mmol/L [H] 2026-11-25 06:30", "abnormal"),
        ("Hemoglobin 98 g/L [L] 2026-11-24 07:00", "abnormal"),
        ("Sodium 138 mmol/L 2026-11-25 08:10", ""),
        ("Note [HHH] typed by hand", ""),
    ],
)
def test_lab_severity(line, severity):
    assert lab_severity(line) == severity


def test_high_criticality_allergy_stands_out():
    text, html = format_summary(summary())
    assert section(text, "Allergies")[0].endswith("!! 高风险 HIGH RISK")
    assert '<strong><span data-mx-color="#b00020">青霉素' in html


def test_empty_sections_say_nothing_is_recorded():
    empty = summary(encounters=[], problems=[], allergies=[], labs=[])
    text, html = format_summary(empty)
    assert section(text, "Encounters") == ["  无就诊记录 No encounters recorded"]
    assert section(text, "Active problems") == ["  无活动性问题记录 No active problems recorded"]
    assert section(text, "Allergies") == [f"  {NO_ALLERGIES_TEXT}"]
    assert section(text, "Recent labs") == ["  无近期检验结果 No recent lab results"]
    visible = "".join(parse(html).text)
    assert NO_ALLERGIES_TEXT in visible
    assert parse(html).tags.count("ul") == 1  # demographics only; no empty lists


def test_no_allergies_on_file_is_not_called_no_known_allergies():
    # "None on file" and "patient has no known allergies" are different clinical facts; a
    # recorded NKA arrives as an AllergyIntolerance line and is listed like any other.
    text, _ = format_summary(summary(allergies=[]))
    assert "not a confirmed" in section(text, "Allergies")[0]
    nka = summary(allergies=["No known allergy (allergy)"])
    assert section(format_summary(nka)[0], "Allergies") == ["  - No known allergy (allergy)"]


def test_every_value_is_html_escaped():
    hostile = summary(
        name='<img src=x onerror="alert(1)">',
        patient_id="P1&<b>",
        gender="<i>",
        birth_date="1958",
        encounters=["<script>x</script>"],
        problems=["a < b & c > d"],
        allergies=['"quoted" & <em>'],
        labs=["K <3.5> mmol/L [L]"],
    )
    text, html = format_summary(hostile, "https://emr.example/p?id=1&view=<x>")
    parsed = parse(html)
    assert set(parsed.tags) <= {"h4", "p", "strong", "ul", "li", "em", "a", "span"}
    assert "img" not in parsed.tags and "script" not in parsed.tags and "b" not in parsed.tags
    visible = "".join(parsed.text)
    assert '<img src=x onerror="alert(1)">' in visible  # shown as text, not markup
    assert "a < b & c > d" in visible
    assert "K <3.5> mmol/L [L]" in visible
    assert parsed.hrefs == ["https://emr.example/p?id=1&view=<x>"] * 2
    # The plain body is not HTML and is left as is.
    assert "Name: <img src=x onerror=\"alert(1)\">" in text


def test_patient_link_in_both_bodies():
    link = "https://emr.hospital.example/patient/P20261101"
    text, html = format_summary(summary(), link)
    assert text.endswith(f"Full record: {link}")
    assert parse(html).hrefs == [link, link]
    _, without = format_summary(summary())
    assert "<a " not in without


@pytest.mark.parametrize("link", ["javascript:alert(1)", "data:text/html,x", "ftp://x/y"])
def test_only_web_links_are_accepted(link):
    with pytest.raises(ValueError, match="http"):
        format_summary(summary(), link)
