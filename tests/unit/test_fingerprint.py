"""No-forward fingerprints: normalisation, where text and media are found, robustness against
whatever a client sends, and the copy decision (what must and must not count as a copy)."""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from immutabledict import immutabledict

from carematrix.protect import copy_decision, normalise, shingles
from carematrix.protect.copy_decision import is_foreign_copy
from carematrix.protect.extract import media_uris
from carematrix.protect.fingerprint import (
    MIN_TEXT_CHARS,
    content_fingerprints,
    media_hash_fingerprint,
)
from carematrix.protect.model import Fingerprints
from carematrix.protect.normalise import normalise_text

MSG = "m.room.message"

# A protected message of ordinary length, in the two languages the hospital writes.
WARD_EN = (
    "Bed 12 Mr Wang Jianguo, 67M, post-op day 2 after right hemicolectomy. K+ 6.8 mmol/L on "
    "the 06:00 bloods, ECG shows peaked T waves. Started calcium gluconate and "
    "insulin-dextrose, repeat potassium at 08:00 and call the surgical registrar if no better."
)
WARD_ZH = (
    "12床王建国，男，67岁，右半结肠切除术后第2天。今晨6点血钾6.8mmol/L，心电图T波高尖，"
    "已予葡萄糖酸钙及胰岛素加葡萄糖静滴，8点复查血钾，如无改善请联系外科值班医生。"
)
# A long protected report (a discharge summary) whose paragraphs get pasted elsewhere.
REPORT = (
    "DISCHARGE SUMMARY. Patient: Liu Mei, MRN 00482913, admitted 3 March with community "
    "acquired pneumonia complicated by type 1 respiratory failure requiring high flow nasal "
    "oxygen for four days on the respiratory high dependency unit. Sputum culture grew "
    "Streptococcus pneumoniae sensitive to amoxicillin. CT pulmonary angiogram excluded "
    "pulmonary embolism but showed a 9 mm spiculated nodule in the left upper lobe that "
    "needs outpatient follow-up with a repeat CT in three months. Renal function recovered "
    "to baseline creatinine 84 by day five. She was discharged on oral amoxicillin to "
    "complete seven days, with a respiratory clinic appointment and written safety-netting "
    "advice given to her daughter who is her main carer."
)


def fp(body: Any = None, **content: Any) -> Fingerprints:
    if body is not None:
        content["body"] = body
    return content_fingerprints(MSG, content)


def copies(candidate: Fingerprints, protected: Fingerprints) -> bool:
    """The decision as the store makes it: on what the two share."""
    return is_foreign_copy(candidate, candidate.all() & protected.all())


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Patient 王某, K+ 6.8 mmol/L!!", "patient王某k+6.8 mmol/l"),
        ("Patient 王某, K+ 6.8 mmol/L!!", "PATIENT 王某 K 68 MMOL L"),
        ("ＢＥＤ　１２，Ｋ＋６．８", "bed 12 k+ 6.8"),  # fullwidth letters, digits, space
        ("血钾６．８ｍｍｏｌ／Ｌ，请复查。", "血钾 6.8 mmol/L 请复查"),  # CJK punctuation
        ("Straße", "STRASSE"),  # casefold, not lower
        ("ﬁve ① ㎎", "five 1 mg"),  # compatibility forms (ligature, circled digit, unit)
        ("pa\u200btient\u00adname\ufeff", "patientname"),  # zero-width and soft hyphen (Cf)
        ("> quoted line\n> second line", "quoted line second line"),
        ("**bold** _it_ `code` ~~x~~", "bold it code x"),  # markdown is punctuation
        ("café", "cafe\u0301"),  # composed vs decomposed accents
        ("tab\there\r\nnewline", "tab here newline"),
    ],
)
def test_trivially_different_spellings_normalise_equal(a, b):
    assert normalise_text(a) == normalise_text(b)


def test_normalised_text_keeps_letters_and_digits_of_every_script_only():
    assert normalise_text("Patient 王某, K+ 6.8 mmol/L!!") == "patient王某k68mmoll"
    assert normalise_text("Ψ ΑΣ ąę жЖ 患者 ١٢٣ १२") == "ψασąęжж患者١٢٣१२"
    assert normalise_text("🙂👍 ✔ ★ ... !!! ???") == ""


def test_digits_are_not_confused_with_each_other():
    # '+' and '.' are dropped (documented), but the digits themselves always stay
    assert normalise_text("K+ 6.8") != normalise_text("K+ 5.8")
    assert normalise_text("bed 12") != normalise_text("bed 21")


@pytest.mark.parametrize("value", [None, 5, b"bytes", ["a"], ""])
def test_normalise_text_of_a_non_string_is_empty(value):
    assert normalise_text(value) == ""


# --- text fingerprints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body", ["ok", "收到", "thanks", "Thanks!!", "OK 👍", "好的，谢谢", "noted."]
)
def test_short_replies_have_no_fingerprints(body):
    assert fp(body).is_empty()


def test_whole_text_fingerprint_starts_at_min_text_chars():
    assert len(normalise_text("abc def ghi jk")) == MIN_TEXT_CHARS - 1
    assert fp("abc def ghi jk").text == frozenset()
    assert len(fp("abc def ghi jkl").text) == 1
    assert fp("abc def ghi jkl").shingles == frozenset()  # far too short for shingles


def test_fingerprint_kinds_and_format():
    f = fp(WARD_EN, url="mxc://hospital.example/AbC123")
    assert f.media == {"mxc:hospital.example/AbC123"}
    assert all(t.startswith("t:") and len(t) == 2 + 32 for t in f.text)
    assert all(s.startswith("s:") and len(s) == 2 + 16 for s in f.shingles)
    assert f.all() == f.media | f.text | f.shingles and not f.is_empty()
    assert Fingerprints().is_empty() and Fingerprints().all() == frozenset()


def test_shingles_work_on_characters_so_chinese_gets_them_too():
    f = fp(WARD_ZH)
    assert len(f.text) == 1
    # bounded by the window: about 3/17 of the k-grams, never one per character
    assert 10 <= len(f.shingles) <= len(normalise_text(WARD_ZH)) // 2


def test_long_texts_yield_a_number_of_shingles_proportional_to_length():
    one, four = fp(REPORT), fp(" ".join([REPORT.replace("Liu", n) for n in "ABCD"]))
    assert len(one.shingles) < len(normalise_text(REPORT)) // 3
    assert len(four.shingles) < 5 * len(one.shingles)


@pytest.mark.parametrize(
    "altered",
    [
        WARD_EN.upper(),
        WARD_EN.lower(),
        "  ".join(WARD_EN.split(" ")),
        WARD_EN.replace(" ", "\n"),
        WARD_EN.replace(",", "").replace(".", "").replace("-", " "),
        WARD_EN.replace("6.8", "６．８").replace("12", "１２").replace("08:00", "０８：００"),
        "> " + WARD_EN,
        "**" + WARD_EN + "**!!!",
    ],
)
def test_trivially_altered_text_has_the_same_whole_text_fingerprint(altered):
    assert fp(altered).text & fp(WARD_EN).text
    assert copies(fp(altered), fp(WARD_EN))


def test_quoted_copy_with_a_comment_matches_exactly():
    quoted = "\n".join("> " + line for line in WARD_ZH.split("。")) + "\n\n收到，马上处理"
    assert fp(quoted).text & fp(WARD_ZH.replace("。", "\n")).text
    assert copies(fp(quoted), fp(WARD_ZH))


def test_text_beside_an_unrelated_quote_matches_exactly():
    body = "> <@bob:hospital.example> any news?\n\n" + WARD_EN
    assert fp(body).text & fp(WARD_EN).text


def test_formatted_body_html_is_reduced_to_its_text():
    html = (
        "<p><b>Bed 12</b> Mr Wang Jianguo, 67M, post-op day&nbsp;2 after right "
        "hemicolectomy.<br/>K&#43; 6.8&nbsp;mmol/L on the 06:00 bloods, ECG shows "
        "<i>peaked T waves</i>. Started calcium gluconate and insulin-dextrose, repeat "
        'potassium at 08:00 and call the <a href="https://example.org">surgical registrar'
        "</a> if no better.</p>"
    )
    f = content_fingerprints(MSG, {"body": "see formatted", "formatted_body": html})
    assert f.text & fp(WARD_EN).text


def test_formatted_body_blockquote_is_compared_on_its_own():
    html = f"<blockquote><p>{WARD_ZH}</p></blockquote><p>请大家注意</p>"
    f = content_fingerprints(MSG, {"body": "请大家注意", "formatted_body": html})
    assert f.text & fp(WARD_ZH).text


def test_reply_fallback_carries_the_quoted_text_and_is_not_stripped():
    body = (
        "> <@d1001:hospital.example> "
        + WARD_EN[:80]
        + "\n> "
        + WARD_EN[80:]
        + "\n\nDone, repeat K+ sent."
    )
    assert fp(body).text & fp(WARD_EN).text
    html = (
        '<mx-reply><blockquote><a href="https://matrix.to/#/!r:hs/$e">In reply to</a> '
        '<a href="https://matrix.to/#/@d1001:hospital.example">@d1001:hospital.example</a>'
        f"<br>{WARD_EN}</blockquote></mx-reply>Done, repeat K+ sent."
    )
    only_html = content_fingerprints(MSG, {"body": "Done", "formatted_body": html})
    assert only_html.text & fp(WARD_EN).text
    emote = "> * <@d1001:hospital.example> " + WARD_EN + "\n\nok"
    assert fp(emote).text & fp(WARD_EN).text


def test_an_edit_is_fingerprinted_by_its_new_content():
    edit = {
        "msgtype": "m.text",
        "body": "* fixed typo",
        "m.new_content": {"msgtype": "m.text", "body": WARD_EN},
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"},
    }
    assert copies(content_fingerprints(MSG, edit), fp(WARD_EN))
    html_edit = {
        "body": "* x",
        "m.new_content": {"body": "x", "formatted_body": f"<p>{WARD_ZH}</p>"},
    }
    assert content_fingerprints(MSG, html_edit).text & fp(WARD_ZH).text


def test_media_filename_and_caption_are_text_sources():
    caption = "Chest X-ray of bed 12 Wang Jianguo showing right lower lobe consolidation"
    image = {"msgtype": "m.image", "body": caption, "filename": "IMG_20260301_wang_cxr.jpg"}
    assert fp(caption).text <= content_fingerprints(MSG, image).text
    assert content_fingerprints(
        MSG, {"msgtype": "m.file", "body": "wang_jianguo_ct_report.pdf"}
    ).text


def test_encrypted_events_have_no_fingerprints():
    content = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEqAB" * 40}
    assert content_fingerprints("m.room.encrypted", content).is_empty()


def test_frozen_synapse_content_gives_the_same_fingerprints_as_plain_dicts():
    plain = {
        "body": "> <@a:hs> " + WARD_EN + "\n\nok",
        "formatted_body": f"<p>{WARD_ZH}</p>",
        "info": {"thumbnail_file": {"url": "mxc://hs/thumb"}},
        "m.new_content": {"body": REPORT, "file": {"url": "mxc://hs/file"}},
    }
    frozen = immutabledict(
        {
            "body": plain["body"],
            "formatted_body": plain["formatted_body"],
            "info": immutabledict({"thumbnail_file": immutabledict({"url": "mxc://hs/thumb"})}),
            "m.new_content": immutabledict(
                {"body": REPORT, "file": immutabledict({"url": "mxc://hs/file"})}
            ),
        }
    )
    a, b = content_fingerprints(MSG, plain), content_fingerprints(MSG, frozen)
    assert a == b and a.sequences == b.sequences and not a.is_empty()


# --- media ---------------------------------------------------------------------------------


def test_media_uris_in_every_place():
    content = {
        "msgtype": "m.image",
        "body": "scan.png",
        "url": "mxc://hs.example/plain",
        "info": {
            "thumbnail_url": "mxc://hs.example/thumb",
            "thumbnail_file": {"url": "mxc://hs.example/enc-thumb", "key": {"k": "x"}},
        },
        "file": {"url": "mxc://hs.example/enc-file", "iv": "x", "hashes": {"sha256": "x"}},
        "m.new_content": {
            "url": "mxc://other.example/new",
            "info": {"thumbnail_url": "mxc://other.example/new-thumb"},
            "file": {"url": "mxc://other.example/new-file"},
        },
    }
    assert media_uris(content) == [
        "mxc://hs.example/plain",
        "mxc://hs.example/thumb",
        "mxc://hs.example/enc-file",
        "mxc://hs.example/enc-thumb",
        "mxc://other.example/new",
        "mxc://other.example/new-thumb",
        "mxc://other.example/new-file",
    ]
    assert content_fingerprints(MSG, content).media == {
        "mxc:" + uri[len("mxc://") :] for uri in media_uris(content)
    }


def test_media_uris_elsewhere_are_found_too():
    content = {
        "body": "see mxc://hs.example/pasted, (mxc://hs.example/paren). not mxc://hs/a/b",
        "formatted_body": '<p>scan: <img src="mxc://hs.example/inline" alt="x"></p>',
        "avatar_url": "mxc://hs.example/avatar",
        "org.example.gallery": [{"items": ("mxc://hs.example/deep",)}],
        "url": "mxc://hs.example/plain",
    }
    assert media_uris(content)[0] == "mxc://hs.example/plain"
    assert set(media_uris(content)) == {
        "mxc://hs.example/plain",
        "mxc://hs.example/pasted",
        "mxc://hs.example/paren",
        "mxc://hs.example/inline",
        "mxc://hs.example/avatar",
        "mxc://hs.example/deep",
    }


def test_media_uris_are_deduplicated_and_junk_is_ignored():
    content = {
        "url": "mxc://hs.example/same",
        "file": {"url": "mxc://hs.example/same"},
        "info": {"thumbnail_url": "  mxc://hs.example/spaced  "},
        "other": ["mxc://", "mxc://hs.example", "mxc://hs.example/", "http://hs.example/a/b"],
        "more": ["mxc:///noserver", "mxc://hs/a/b", "mxc://hs/\u00e9t\u00e9", 7, None],
    }
    assert media_uris(content) == ["mxc://hs.example/same", "mxc://hs.example/spaced"]


def test_the_same_media_is_a_copy_whatever_the_text():
    protected = content_fingerprints(
        MSG, {"msgtype": "m.image", "body": "x.png", "url": "mxc://hs/abc"}
    )
    forwarded = content_fingerprints(
        MSG, {"msgtype": "m.image", "body": "nice.png", "url": "mxc://hs/abc"}
    )
    assert copies(forwarded, protected)
    assert not copies(
        content_fingerprints(MSG, {"msgtype": "m.image", "body": "x.png", "url": "mxc://hs/xyz"}),
        protected,
    )


def test_media_hash_fingerprint():
    digest = "A" * 64
    assert media_hash_fingerprint(digest) == "h:" + "a" * 64
    assert is_foreign_copy(Fingerprints(), {media_hash_fingerprint(digest)})
    for bad in ["", "abc", "g" * 64, "a" * 63, None]:
        with pytest.raises(ValueError):
            media_hash_fingerprint(bad)


# --- malformed content ---------------------------------------------------------------------


class HostileMapping(Mapping):
    """A mapping that fails at every turn (a bug elsewhere must not break the send path)."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        return 1

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("boom")

    def values(self) -> Any:
        raise RuntimeError("boom")


def _deep(depth: int) -> dict:
    node: dict = {"url": "mxc://hs/deep"}
    for _ in range(depth):
        node = {"x": [node]}
    return node


MALFORMED = [
    None,
    "a string",
    ["list"],
    42,
    {},
    {"body": 5},
    {"body": None, "formatted_body": 3.5},
    {"body": ["not", "a", "string"]},
    {"body": {"nested": "dict"}},
    {"body": b"bytes body"},
    {"body": "lone surrogate \ud800 in the text of a long enough message"},
    {"formatted_body": "<<<>>> <b <i </p> &bogus; &#xD800; &#99999999; <!-- x"},
    {"formatted_body": "<mx-reply><blockquote>never closed"},
    {"formatted_body": "</blockquote></mx-reply></blockquote> unbalanced closers here"},
    {"m.new_content": "not a mapping"},
    {"m.new_content": {"m.new_content": {"body": 1}}},
    {"m.new_content": None, "body": "* "},
    {"info": ["thumbnail_url"], "file": "mxc://hs/x"},
    {"info": {"thumbnail_file": "mxc://hs/x", "thumbnail_url": 12}},
    {"file": {"url": ["mxc://hs/a"]}, "url": {"x": 1}},
    {"url": "mxc://hs/\ud800", "avatar_url": "mxc://hs/a\x00b"},
    {1: "int key", None: "none key", ("t",): "tuple key"},
    {"body": "x" * 200_000},
    _deep(5_000),
    HostileMapping(),
    {"body": "ok", "info": HostileMapping(), "m.new_content": HostileMapping()},
]


@pytest.mark.parametrize("content", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_content_never_raises(content):
    f = content_fingerprints(MSG, content)
    assert isinstance(f, Fingerprints)
    assert isinstance(media_uris(content), list)
    assert is_foreign_copy(f, f.all()) in (True, False)


def test_malformed_parts_do_not_hide_the_readable_ones():
    content = {"body": WARD_EN, "formatted_body": 7, "info": "junk", "file": {"url": "mxc://h/f"}}
    f = content_fingerprints(MSG, content)
    assert f.text & fp(WARD_EN).text and f.media == {"mxc:h/f"}


# --- the decision rule -----------------------------------------------------------------------


def test_nothing_shared_is_never_a_copy():
    assert not is_foreign_copy(fp(WARD_EN), set())
    assert not is_foreign_copy(Fingerprints(), set())


@pytest.mark.parametrize(
    ("protected", "edited"),
    [
        (WARD_EN, WARD_EN.replace("Started", "We started").replace("call the", "please call")),
        (WARD_EN, WARD_EN.replace("Mr Wang Jianguo", "Mr W.").replace("08:00", "09:00")),
        (WARD_EN, "FYI from the surgical team: " + WARD_EN + " Thanks all."),
        (WARD_EN, WARD_EN.replace("peaked T", "tall tented T").replace("if no better", "asap")),
        (WARD_ZH, WARD_ZH.replace("请联系", "请马上联系").replace("今晨", "今天早上")),
        (WARD_ZH, WARD_ZH.replace("12床王建国", "12床王某") + "谢谢！"),
    ],
)
def test_a_copy_with_a_few_words_added_or_changed_is_a_copy(protected, edited):
    assert not (fp(edited).text & fp(protected).text)  # not an exact copy any more
    assert copies(fp(edited), fp(protected))


@pytest.mark.parametrize(
    ("start", "length"),
    [(0, 60), (137, 60), (301, 62), (480, 65), (560, 70)],
)
def test_a_pasted_paragraph_of_a_long_report_is_a_copy(start, length):
    paragraph = REPORT[start : start + length]
    message = (
        "Morning all, handover for the respiratory clinic list on Thursday, three new "
        "referrals and one follow-up. For the follow-up, from her summary: "
        + paragraph
        + " Can someone check whether the CT request has been made and book transport "
        "for her, she lives alone on the fourth floor without a lift?"
    )
    assert not (fp(message).text & fp(REPORT).text)
    assert copies(fp(message), fp(REPORT))


def test_a_pasted_paragraph_in_chinese_is_a_copy():
    report_zh = WARD_ZH * 1 + (
        "患者既往有高血压病史十年，规律服用氨氯地平，血压控制可。否认糖尿病及冠心病史。"
        "术后第一天出现少尿，每小时尿量约二十毫升，予补液后改善，肌酐由入院时七十升至一百三十。"
        "今日复查腹部增强CT未见吻合口瘘，引流液为淡血性，约五十毫升。"
    )
    paste = report_zh[95:155]
    assert len(normalise_text(paste)) == 53
    message = "各位好，关于明天的手术排班，先说一下这个病人的情况：" + paste + "请麻醉科评估。"
    assert copies(fp(message), fp(report_zh))


def test_unrelated_messages_sharing_common_clinical_phrases_are_not_copies():
    protected = fp(
        "Please review the patient in bed 4 before the ward round, vital signs stable "
        "overnight but new confusion this morning. No known drug allergies. Continue current "
        "management and please call me back if any concerns. Thanks."
    )
    others = [
        "Please review the patient, continue current management, vital signs stable, "
        "no known drug allergies. Thanks.",
        "Hi team, please review the patient in side room 3 when you can: temperature 38.9, "
        "new cough, sputum sent. Continue current management for now. No known drug "
        "allergies. Please call me back if any concerns about the sepsis screen.",
        "Theatre list update: first case delayed, please review the patient in recovery "
        "before 2pm. Vital signs stable. The anaesthetist will call back if any concerns.",
        "请查看患者，生命体征平稳，继续目前治疗，如有不适请及时联系。谢谢！",
    ]
    for other in others:
        assert not copies(fp(other), protected), other


def test_a_shared_boilerplate_sentence_of_46_plus_characters_is_treated_as_a_copy():
    # the documented price of catching pasted paragraphs: 46 shared normalised characters
    # in a row look exactly like a paste, whatever their origin
    sentence = "No known drug allergies; continue all current management."
    assert len(normalise_text(sentence)) == 48
    protected = fp("Bed 4: new confusion this morning. " + sentence + " Call me if worse.")
    assert copies(fp("Side room 3, temperature 38.9, cough. " + sentence + " Thanks."), protected)


def test_sharing_the_same_common_phrases_with_a_long_report_is_not_a_copy():
    note = fp(
        "Ward round note: discharged on oral antibiotics to complete the course, follow-up "
        "with a repeat CT in three months was discussed, and advice given to the family. "
        "Renal function recovered. Outpatient clinic appointment to be booked."
    )
    assert not copies(note, fp(REPORT))


def test_hand_built_fingerprints_without_offsets_fall_back_to_counting():
    hand_built = frozenset(f"s:{i:016x}" for i in range(20))
    candidate = Fingerprints(shingles=hand_built)
    assert not is_foreign_copy(candidate, set(list(hand_built)[:3]))
    assert is_foreign_copy(candidate, set(list(hand_built)[:4]))
    small = Fingerprints(shingles=frozenset(list(hand_built)[:5]))
    assert is_foreign_copy(small, set(list(hand_built)[:3]))  # more than half of a short text
    assert not is_foreign_copy(small, set(list(hand_built)[:2]))


def test_any_whole_text_or_media_match_is_a_copy():
    assert is_foreign_copy(fp(WARD_EN), {next(iter(fp(WARD_EN).text))})
    assert is_foreign_copy(Fingerprints(), {"mxc:hs/abc"})


# --- the fast paths equal the plain definitions ----------------------------------------------

M64 = (1 << 64) - 1


def _fmix(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & M64
    return x ^ (x >> 33)


def _reference_hashes(text: str) -> list[int]:
    """Every K-gram's hash, one at a time in Python integers: what numpy must compute."""
    chars = [_fmix((ord(c) + 0x243F6A8885A308D3) & M64) for c in text]
    out = []
    for i in range(len(chars) - shingles.K + 1):
        h = 0
        for c in chars[i : i + shingles.K]:
            h = (h * shingles._ROLL_BASE + c) & M64
        out.append(_fmix(h))
    return out


def _reference_hashes_of_width(text: str, width: int) -> list[int]:
    chars = [_fmix((ord(c) + 0x243F6A8885A308D3) & M64) for c in text]
    out = []
    for i in range(len(chars) - width + 1):
        h = 0
        for c in chars[i : i + width]:
            h = (h * shingles._ROLL_BASE + c) & M64
        out.append(_fmix(h))
    return out


def _reference_mod_minimizer(text: str) -> list[int]:
    """Each window of W k-grams: its smallest t-gram (top bits of the hash, then leftmost)
    at x within the window chooses the k-gram at x mod W."""
    k, w, t = shingles.K, shingles.W, shingles.T
    tmers = _reference_hashes_of_width(text, t)
    chosen: set[int] = set()
    for start in range(len(text) - k + 1 - w + 1):
        window = tmers[start : start + w + k - t]
        x = min(range(len(window)), key=lambda i: (window[i] >> shingles._TIE_BITS, i))
        chosen.add(start + x % w)
    return sorted(chosen)


def _texts(seed: int, count: int) -> Iterator[str]:
    rng = random.Random(seed)
    alphabets = ["ab", "abcdefghij", "患者血压心率", "a\ud800b", "0123456789", "zz"]
    for _ in range(count):
        alphabet = rng.choice(alphabets)
        yield "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))


def test_kgram_hashes_and_winnowing_equal_the_definition():
    for text in _texts(1, 300):
        offsets = [o for o, _ in shingles.shingle_sequence(text)]
        if len(text) < shingles.K + shingles.W:
            assert offsets == []
            continue
        hashes = _reference_hashes(text)
        assert shingles._kgram_hashes(text).tolist() == hashes
        assert offsets == _reference_mod_minimizer(text)
        assert all(s == f"s:{hashes[o]:016x}" for o, s in shingles.shingle_sequence(text))


def test_a_shared_stretch_of_46_characters_is_always_a_chain_of_32():
    # the mod-minimizer is forward: every k-gram chosen inside a shared stretch, between
    # the choices of its first and last windows, is chosen in both texts
    rng = random.Random(6)
    alphabets = ["ab", "abcdefghij", "患者血压心率", "abcdefghijklmnopqrstuvwxyz0123456789"]
    for _ in range(400):
        alphabet = rng.choice(alphabets)

        def text(n: int, alphabet: str = alphabet) -> str:
            return "".join(rng.choice(alphabet) for _ in range(n))

        stretch = text(rng.randint(46, 90))
        one = text(rng.randint(0, 40)) + stretch + text(rng.randint(0, 40))
        two = text(rng.randint(0, 40)) + stretch + text(rng.randint(0, 40))
        candidate = fp(two)
        shared = candidate.shingles & fp(one).shingles
        assert copy_decision.longest_shared_run(candidate, shared) >= len(stretch) - 2 * 8 + 2


def test_chosen_k_grams_are_at_most_w_apart_and_about_3_in_17():
    text = normalise_text(REPORT * 3)
    offsets = [o for o, _ in shingles.shingle_sequence(text)]
    assert offsets[0] < shingles.W
    assert max(b - a for a, b in zip(offsets, offsets[1:], strict=False)) <= shingles.W
    assert 0.15 < len(offsets) / (len(text) - shingles.K + 1) < 0.2


def test_a_long_candidate_is_sampled_and_its_sample_covers_every_long_chain():
    assert copy_decision.shingle_sample(fp(WARD_EN)) is None  # short: looked up whole
    assert copy_decision.shingle_sample(Fingerprints(shingles=frozenset({"s:1"}))) is None
    candidate = fp(REPORT)
    sample = copy_decision.shingle_sample(candidate)
    assert sample is not None and len(candidate.shingles) >= copy_decision.SAMPLE_MIN_SHINGLES
    assert len(sample) <= len(candidate.shingles) // 3 + 2
    sequence = [s for _, s in candidate.sequences[0]]
    rng = random.Random(7)
    for _ in range(300):
        start = rng.randrange(len(sequence) - 3)
        chain = set(sequence[start : start + rng.randint(3, 8)])
        hits = chain & sample
        assert hits  # every chain of three positions has a sampled one
        assert chain <= hits | copy_decision.shingle_neighbours(candidate, hits)


def test_rule_4_counts_on_the_sample_of_a_long_candidate():
    candidate = fp(REPORT)
    sample = sorted(copy_decision.shingle_sample(candidate))
    others = sorted(candidate.shingles - set(sample))
    # half the sample: a reworded copy
    assert is_foreign_copy(candidate, set(sample[: (len(sample) + 1) // 2]))
    assert not is_foreign_copy(candidate, set(sample[: len(sample) // 2 - 1]))
    # the shingles outside the sample count only through rule 3
    lone = {s for s in others if copy_decision.longest_shared_run(candidate, {s}) < 32}
    assert not is_foreign_copy(candidate, set(list(lone)[:3]))


def test_shingles_are_the_same_on_every_machine():
    # fixed constants and wrapping 64-bit arithmetic: these values must never change by
    # accident (stored fingerprints would stop matching)
    assert shingles._kgram_hashes("abcdefghijklmnop").tolist() == [17596573770018659192]
    text = normalise_text("Bed 12 Mr Wang Jianguo, K+ 6.8 mmol/L, repeat potassium at 08:00")
    assert shingles.shingle_sequence(text)[:3] == (
        (0, "s:706dcb3968c5ab72"),
        (2, "s:d9751ce618c98cd8"),
        (8, "s:c365de772b70f3cf"),
    )


def test_no_character_that_composes_backwards_counts_as_a_boundary():
    seconds = set()
    for code in range(0x110000):
        decomposition = unicodedata.decomposition(chr(code))
        if decomposition and not decomposition.startswith("<"):
            parts = decomposition.split()
            if len(parts) == 2:
                seconds.add(chr(int(parts[1], 16)))
    assert len(seconds) > 50
    assert not [hex(ord(c)) for c in seconds if normalise._is_boundary(c)]


@pytest.mark.parametrize(
    "text",
    [
        "ｶﾞｷﾞ 半角",  # halfwidth voiced sound mark: composes with the kana before it
        "\u1100\u1161\u11a8 한국어",  # conjoining jamo compose into a syllable
        "cafe\u0301 CAFÉ ǅ ß ẞ ﬁ ㎎ ① Ⅻ",  # marks, expansions, compatibility forms
        "\u0b47\u0b3e \u0bc6\u0bbe",  # Oriya and Tamil vowel signs that compose
        "ΐ ΰ ς Σ İ ı",  # casefolding into combining sequences
        "患者，血钾６．８ｍｍｏｌ／Ｌ。请复查！",
        "lone \ud800 surrogate \udfff",
    ],
)
def test_normalisation_by_character_equals_unicodedata(text):
    assert normalise_text(text) == normalise._normalise_exact(text)


def test_normalisation_by_character_equals_unicodedata_on_random_text():
    rng = random.Random(4)
    pool = [chr(c) for c in (*range(0x20, 0x2500), *range(0x3000, 0x3100), *range(0xFF00, 0xFFF0))]
    pool += [chr(c) for c in (*range(0x1100, 0x1200), *range(0xAC00, 0xAC20), 0x4E00, 0x9FA5)]
    for _ in range(3000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 12)))
        assert normalise_text(text) == normalise._normalise_exact(text), repr(text)


def test_longest_shared_run_equals_a_walk_over_every_position():
    def walk(candidate: Fingerprints, shared: set[str]) -> int:
        longest = 0
        for sequence in candidate.sequences:
            start = None
            for offset, shingle in sequence:
                if shingle not in shared:
                    start = None
                    continue
                start = offset if start is None else start
                longest = max(longest, offset - start + shingles.K)
        return longest

    rng = random.Random(5)
    for _ in range(500):
        sequences = []
        for _ in range(rng.randint(0, 3)):
            offset, sequence = 0, []
            for _ in range(rng.randint(0, 30)):
                offset += rng.randint(1, shingles.W)
                sequence.append((offset, f"s:{rng.randint(0, 12):016x}"))
            sequences.append(tuple(sequence))
        candidate = Fingerprints(
            shingles=frozenset(s for q in sequences for _, s in q), sequences=tuple(sequences)
        )
        for _ in range(4):
            shared = {f"s:{rng.randint(0, 14):016x}" for _ in range(rng.randint(0, 10))}
            assert copy_decision.longest_shared_run(candidate, shared) == walk(candidate, shared)


def test_a_voice_message_label_is_not_text_but_its_file_is_protected():
    """Element labels every voice message "Voice message": fingerprinting that would make the
    first one in a ward room a forward of every later one anywhere."""
    from carematrix.protect.extract import media_uris, text_sources

    voice = {
        "msgtype": "m.audio", "body": "Voice message", "url": "mxc://h/voice1",
        "info": {"mimetype": "audio/ogg", "duration": 5880}, "org.matrix.msc3245.voice": {},
    }
    assert list(text_sources(voice)) == []
    assert media_uris(voice) == ["mxc://h/voice1"]
    attached = {"msgtype": "m.audio", "body": "王建国 ward round recording.ogg", "url": "mxc://h/a2"}
    assert [t for t, _ in text_sources(attached)] == ["王建国 ward round recording.ogg"]
