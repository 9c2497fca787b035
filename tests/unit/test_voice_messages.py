"""Voice messages as Matrix content: what is one, the transcript reply, the notices, the
glossary prompt and the scores the benchmark reports."""

from __future__ import annotations

from carematrix.voice.messages import (
    PROBLEMS,
    Transcript,
    initial_prompt,
    page_subject,
    problem_content,
    transcript_content,
    voice_message,
)
from carematrix.voice.scoring import cer, wer

ELEMENT_VOICE = {
    "msgtype": "m.audio", "body": "Voice message", "url": "mxc://h/abc",
    "info": {"mimetype": "audio/ogg", "size": 19357, "duration": 5880},
    "org.matrix.msc1767.audio": {"duration": 5880, "waveform": [1, 2]},
    "org.matrix.msc3245.voice": {},
}


def test_element_voice_message_is_recognised_with_its_duration():
    voice = voice_message(ELEMENT_VOICE)
    assert voice is not None and voice.voice and voice.url == "mxc://h/abc" and not voice.encrypted
    assert voice.duration_ms == 5880 and voice.mimetype == "audio/ogg"


def test_encrypted_file_text_edits_and_transcripts_are_not_new_voice_messages():
    encrypted = {k: v for k, v in ELEMENT_VOICE.items() if k != "url"} | {"file": {"url": "mxc://h/e", "key": {}}}
    voice = voice_message(encrypted)
    assert voice is not None and voice.encrypted and voice.url is None
    assert voice_message({"msgtype": "m.text", "body": "hi"}) is None
    assert voice_message(ELEMENT_VOICE | {"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}}) is None
    assert voice_message(ELEMENT_VOICE | {"org.carematrix.transcript": {}}) is None
    assert voice_message(ELEMENT_VOICE | {"info": {"duration": "long"}}).duration_ms is None


def test_transcript_is_a_reply_notice_with_language_model_and_confidence():
    content = transcript_content("$voice", "@n1:h", Transcript("三床病人血钾偏低", "zh", "whisper-base-int8", 0.84912, 5.88, 0.99))
    assert content["msgtype"] == "m.notice"
    assert content["m.relates_to"] == {"rel_type": "m.reference", "event_id": "$voice", "m.in_reply_to": {"event_id": "$voice"}}
    assert content["body"] == "三床病人血钾偏低"  # the words alone: fingerprinted like typed text
    assert content["org.carematrix.transcript"] == {
        "event_id": "$voice", "language": "zh", "model": "whisper-base-int8", "confidence": 85,
        "duration_ms": 5880, "language_probability": 99,
    }
    assert content["m.mentions"] == {"user_ids": ["@n1:h"]}
    # Matrix refuses floats in events (canonical JSON): every figure is an integer.
    assert not any(isinstance(v, float) for v in content["org.carematrix.transcript"].values())


def test_every_problem_notice_is_chinese_first_with_english_beside_it():
    for problem in PROBLEMS:
        body = problem_content("$v", problem, 120)["body"]
        ascii_start = next(i for i, ch in enumerate(body) if ch.isascii() and ch.isalpha())
        assert any("\u4e00" <= ch <= "\u9fff" for ch in body[:ascii_start]), body
    assert "120" in problem_content("$v", "too_long", 120)["body"]


def test_glossary_prompt_leads_with_the_wards_words_and_is_cut_to_length():
    assert initial_prompt(("血钾", "补钾"), None) == "病房常用词：血钾、补钾。"
    assert initial_prompt(("troponin", "NSTEMI"), "en") == "Ward terms: troponin, NSTEMI."
    assert initial_prompt((), "zh") == "以下是普通话的句子。"
    assert initial_prompt((), None) is None
    long = initial_prompt(tuple(f"术语{i}" for i in range(200)), None)
    assert long is not None and len(long) <= 161 and long.endswith("。")


def test_page_about_a_voice_message_says_so_in_both_languages():
    assert page_subject(5880) == "语音消息 6 s，转写随后 Voice message 6 s, transcript follows"


def test_scores_ignore_punctuation_and_case():
    assert cer("三床病人血钾偏低，请医生查看。", "三床病人血甲偏低请医生查看") == 1 / 13
    assert wer("The patient in bed twelve.", "the patient in bed 12") == 1 / 5
    assert cer("", "x") == 1.0
