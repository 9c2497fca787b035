"""Chinese text in the search indexes: index and query cut alike (carematrix/cjk_search.py)."""

from __future__ import annotations

import re

import pytest

from carematrix import cjk_search as C


def tokens(indexed: str) -> set[str]:
    """Tokens as a full-text index that cuts at spaces and punctuation sees them."""
    return set(re.findall(r"\w+", indexed))


def directory_query(term: str) -> list[str]:
    """The directory's query path: one filter for names and queries, then words."""
    words: list[str] = []
    for cjk, piece in C.split_cjk(C.without_pinyin(C.directory_index_form(term))):
        words.extend([piece] if cjk else piece.split())
    return C.collapse_query_words(words)


def finds(name: str, term: str) -> bool:
    have = tokens(C.directory_index_form(name.lower()))
    # Synapse searches each word as itself or as a prefix (``word*``).
    return all(any(t.startswith(w) for t in have) for w in directory_query(term.lower()))


def test_a_run_is_indexed_as_its_characters_and_pairs():
    assert C.index_grams("心内科") == ["心", "内", "科", "心内", "内科"]
    assert C.index_form("心内科 主班医生 Cardiology attending").split() == [
        "心", "内", "科", "心内", "内科", "主", "班", "医", "生", "主班", "班医", "医生", "Cardiology", "attending"
    ]


def test_a_chinese_name_is_found_by_its_pinyin_and_initials():
    for name, terms in (
        ("李伟", ("liwei", "lw", "li wei", "liw", "wei")),
        ("吕蒙 · 心内科", ("lvmeng", "lm", "xinneike", "xnk")),
        ("单雄信", ("shanxiongxin", "sxx", "danxiongxin")),  # a surname read its other way
        ("曾国藩", ("zengguofan", "zgf", "cengguofan")),
        ("重症医学科 李伟 Li Wei", ("zzyxk", "zhongzhengyixueke", "lw", "Li Wei")),
    ):
        for term in terms:
            assert finds(name, term), (name, term)
    for name, term in (("李伟", "lm"), ("刘洋", "lw"), ("李伟", "wl"), ("黎明", "李")):
        assert not finds(name, term), (name, term)


def test_a_chinese_query_is_searched_by_its_characters_not_its_pinyin():
    assert directory_query("李伟") == ["李伟"]
    assert directory_query("李") == ["李"]  # not li: 黎 and 理 would match
    assert "\x1f" not in " ".join(directory_query("李伟 lw"))
    assert C.pinyin_words("Alice") == [] and C.directory_index_form("alice") == "alice"
    assert C.pinyin_words("ゆき") == []  # kana have no pinyin


def test_a_query_run_is_its_pairs_or_its_one_character():
    assert C.query_grams("刘洋") == ["刘洋"]
    assert C.query_grams("重症医学科") == ["重症", "症医", "医学", "学科"]
    assert C.query_grams("心") == ["心"]
    assert C.query_grams("") == []


def test_the_directory_query_drops_characters_its_pairs_already_hold():
    assert directory_query("心内科") == ["心内", "内科"]
    assert directory_query("心") == ["心"]
    assert directory_query("心 内科") == ["心", "内科"]
    assert directory_query("王 cardiology") == ["王", "cardiology"]


def test_every_part_of_a_chinese_display_name_finds_it_and_others_do_not():
    role = "心内科 主班医生 Cardiology attending"
    for term in ("心内科", "主班医生", "主班", "医生", "内科", "心", "科", "Cardiology", "attend"):
        assert finds(role, term), term
    for term in ("重症医学科", "外科", "内心", "刘洋"):
        assert not finds(role, term), term
    assert finds("刘洋", "刘洋") and finds("重症医学科 李伟", "李伟") and finds("重症医学科 李伟", "重症医学科")
    assert not finds("刘海洋", "刘洋")


def test_text_without_cjk_is_unchanged():
    for text in ("Dr. Alice Smith", "user-71", "potassium 7.2", ""):
        assert C.index_form(text) == text
        assert C.message_index_value(text) == text
        assert C.message_query(text) == text
    assert not C.is_cjk("Zoë Müller") and C.is_cjk("Dr.王")


def test_a_message_keeps_its_text_and_adds_the_grams_of_its_chinese():
    value = C.message_index_value("患者王建国血钾7.2")
    assert value.startswith("患者王建国血钾7.2\n")
    assert {"王建", "建国", "血钾", "血", "钾"} <= tokens(value)
    assert C.message_index_value(value) == value  # re-indexing twice changes nothing


def test_a_message_query_searches_a_chinese_word_as_its_adjacent_pairs():
    assert C.message_query("王建国") == '"王建 建国" '
    assert C.message_query("血钾 potassium") == " 血钾  potassium"
    assert C.message_query("血") == " 血 "
    assert C.message_query("-王建国") == '-"王建 建国" '
    assert C.message_query('"患者王建国"') == '" 患者 者王 王建 建国 "'
    # Inserted quotes come in pairs: the user's phrases keep their meaning.
    assert C.message_query('王建国 "high potassium"').count('"') == 4


@pytest.mark.parametrize(("note", "phrase"), [
    ("患者王建国CT示右肺结节8mm", "CT示右肺"),  # words before the run: its first characters
    ("患者王建国CT示右肺结节8mm", "王建国CT"),  # words after it: its last pairs
    ("患者王建国CT示右肺结节8mm", "王建国CT示右肺结节8mm"),  # a run between words: all of it
    ("12床的ECG示ST段抬高，已通知", "ECG示ST段抬高"),
    ("血钾，王建国", "血钾，王建国"),  # two runs, punctuation between
    ("患者王建国血钾7.2", "患者王建国"),
])
def test_a_quoted_phrase_is_a_run_of_the_notes_index_words(note, phrase):
    """The words a phrase is searched as stand side by side, in order, in the note's index
    line (what the database's phrase search needs)."""
    indexed = C.message_index_value(note).split("\n", 1)[1].split()
    wanted = C.message_query(f'"{phrase}"').strip().strip('"').split()
    assert any(indexed[i:i + len(wanted)] == wanted for i in range(len(indexed))), (wanted, indexed)


def test_a_quoted_run_between_words_must_be_the_whole_run():
    indexed = C.message_index_value("患者王建国CT示右肺结节8mm").split("\n", 1)[1].split()
    wanted = C.message_query('"CT示右肺8mm"').strip().strip('"').split()  # 结节 left out
    assert not any(indexed[i:i + len(wanted)] == wanted for i in range(len(indexed)))


def test_pairs_of_a_word_are_side_by_side_in_the_index():
    indexed = C.message_index_value("患者王建国血钾7.2").split("\n", 1)[1].split()
    q = C.query_grams("王建国")
    start = indexed.index(q[0])
    assert indexed[start:start + len(q)] == q


def test_kana_and_hangul_are_runs_too():
    assert C.cjk_runs("カルテ 차트 chart") == ["カルテ", "차트"]


def sqlite_tokens(indexed: str) -> set[str]:
    """Tokens as SQLite's FTS "simple" tokenizer sees them: it cuts at ASCII characters
    other than letters and digits and keeps every non-ASCII character in the word."""
    return {t.lower() for t in re.findall(r"(?:[A-Za-z0-9]|[^\x00-\x7f])+", indexed)}


def test_latin_words_and_numbers_written_against_chinese_are_indexed_apart():
    note = "患者王建国CT示右肺结节8mm，建议3个月复查"
    assert "ct" not in sqlite_tokens(note) and "8mm" not in sqlite_tokens(note)  # why the line is needed
    value = C.message_index_value(note)
    assert value.startswith(note + "\n")
    assert {"ct", "8mm", "3", "结节", "王建", "建国"} <= sqlite_tokens(value)
    added = C.message_index_value("复查。8mm、2次")
    assert "8mm" in sqlite_tokens(added.split("\n")[1]) and "。" not in added.split("\n")[1]
    ecg = C.message_index_value("Bed 5 张三丰的ECG示ST段抬高")
    assert {"ecg", "st", "段", "张三", "三丰"} <= sqlite_tokens(ecg)
    assert C.message_index_value(value) == value


def test_full_width_letters_and_digits_are_found_by_their_ascii_forms_either_way():
    value = C.message_index_value("血钾７．２，ＣＴ已做")
    assert {"7", "2", "ct"} <= sqlite_tokens(value.split("\n")[1])
    assert C.message_query("７．２") == "7.2" and C.message_query("ＣＴ") == "CT"
    assert C.message_index_value("ＣＴ ７．２") == "ＣＴ ７．２\nCT 7.2"  # no Chinese, still folded
    assert C.message_query("don’t") == "don’t"  # nothing to fold: as typed


def test_a_message_indexed_in_the_earlier_form_is_re_indexed_in_this_one():
    text = "患者王建国CT示"
    earlier = text + "\n" + " ".join(g for run in C.cjk_runs(text) for g in C.index_grams(run))
    assert "ct" not in sqlite_tokens(earlier.split("\n")[1])
    again = C.message_index_value(earlier)
    assert again == C.message_index_value(text) and again.count("\n") == 1
    assert "ct" in sqlite_tokens(again.split("\n")[1])



def test_a_number_glued_to_its_unit_is_found_by_the_value_and_by_the_unit():
    for note, value, unit in (
        ("患者王建国血钾7.2mmol/L，已通知", "7.2", "mmol"),
        ("K+ 6.8mmol/L, repeat sample", "6.8", "mmol"),
        ("肌酐 120umol/L", "120", "umol"),
        ("体温38.5℃", "38.5", "c"),
        ("0,5ml q8h", "0,5", "ml"),
    ):
        assert not sqlite_tokens(value) <= sqlite_tokens(note) or unit not in sqlite_tokens(note), note  # why
        indexed = C.message_index_value(note)
        assert indexed.startswith(note + "\n"), note
        assert sqlite_tokens(value) <= sqlite_tokens(indexed) and unit in sqlite_tokens(indexed), note
        assert C.message_index_value(indexed) == indexed, note
    assert C.unit_parts("120mg/kg/d") == ["120", "mg", "kg", "d"]
    assert C.message_index_value("Na 128 mmol/L") == "Na 128 mmol/L\nmmol L"  # one word on PostgreSQL


def test_a_value_written_against_its_label_is_found_by_label_and_value():
    for note, words in (
        ("K7.2 Na128", {"k", "7", "2", "na", "128"}),
        ("患者血钾K+6.8，Hb78", {"k", "6", "8", "hb", "78"}),
        ("WBC12.5, PLT45", {"wbc", "12", "5", "plt", "45"}),
        ("血钾K7.2mmol/L", {"k", "7", "2", "mmol", "l"}),
    ):
        indexed = C.message_index_value(note)
        assert indexed.startswith(note + "\n") and words <= sqlite_tokens(indexed), note
        assert C.message_index_value(indexed) == indexed, note
    assert C.labelled_values("K+6.8mmol/L") == ["K", "6.8", "mmol", "L"]


def test_a_message_indexed_in_form_3_gains_its_labelled_values():
    form_3 = "血钾K7.2\n血 钾 血钾 K7.2"
    assert "7" not in sqlite_tokens(form_3.split("\n")[1])
    again = C.message_index_value(form_3)
    assert again == C.message_index_value("血钾K7.2") and again.count("\n") == 1
    assert {"k", "7", "2"} <= sqlite_tokens(again.split("\n")[1])
    english = "Bed 3 K7.2"  # form 3 added no line to it: the re-index adds one
    assert C.message_index_value(english) == english + "\nK 7.2"


def test_words_with_digits_that_are_not_values_add_nothing():
    for text in ("HbA1c 7%", "v1.2.3beta", "plain english text", "COVID19 ward", "and/or w/o", "2 mg",
                 "SpO2 95%", "user-71"):
        assert C.message_index_value(text) == text, text


def test_a_message_indexed_in_form_2_gains_its_unit_parts():
    text = "血钾7.2mmol/L"
    form_2 = text + "\n血 钾 血钾 7.2mmol/L"
    assert "mmol" not in sqlite_tokens(form_2)
    again = C.message_index_value(form_2)
    assert again == C.message_index_value(text) and again.count("\n") == 1 and "mmol" in sqlite_tokens(again)
