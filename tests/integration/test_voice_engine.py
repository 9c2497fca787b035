"""The recogniser as the worker processes run it, on the packaged model and the committed
clips: what each clip says is heard (key terms), the ward glossary corrects what the model
mishears, every kind of bad input comes back as a problem name, and a model that fails its
checksum is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appservice.voice import engine, models
from carematrix.voice.messages import initial_prompt
from carematrix.voice.scoring import cer, wer
from tests.paths import REPO_ROOT
from tests.support import VOICE_MODEL_CACHE

CLIPS = REPO_ROOT / "tests" / "fixtures" / "voice"
REFERENCE = json.loads((CLIPS / "clips.json").read_text(encoding="utf-8"))
GLOSSARY = ("血钾", "补钾", "血压", "化验", "心电图", "心衰", "房颤", "肌酐")


@pytest.fixture(scope="module")
def worker() -> None:
    prepared = models.prepare(VOICE_MODEL_CACHE)
    engine.init_worker({k: (m.name, str(m.path)) for k, m in prepared.items()}, 2)


def clip(name: str) -> bytes:
    return (CLIPS / f"{name}.ogg").read_bytes()


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_each_clip_is_heard_with_its_key_terms(worker: None, name: str):
    ref = REFERENCE[name]
    result = engine.transcribe(clip(name), None, initial_prompt(GLOSSARY, None) if ref["language"] == "zh" else None, 120)
    assert result["language"] == ref["language"] and result["model"] == "whisper-base-int8"
    text = result["text"].casefold()
    missing = [t for t in ref["key_terms"] if t.casefold() not in text]
    assert not missing, f"{missing} not heard in {result['text']!r}"
    score = cer(ref["text"], result["text"]) if ref["language"] == "zh" else wer(ref["text"], result["text"])
    assert score < 0.5, (score, result["text"])


def test_the_ward_glossary_corrects_what_the_model_mishears(worker: None):
    ref = REFERENCE["zh_potassium"]["text"]
    plain = engine.transcribe(clip("zh_potassium"), "zh", None, 120)["text"]
    steered = engine.transcribe(clip("zh_potassium"), "zh", initial_prompt(GLOSSARY, "zh"), 120)["text"]
    # Without the glossary the model writes the homophone 血甲/血假 (blood "shell"/"false").
    assert "血钾" in steered and "血钾" not in plain, (plain, steered)
    assert cer(ref, steered) < cer(ref, plain), (plain, steered)


def test_english_units_use_the_english_model(worker: None):
    result = engine.transcribe(clip("en_chest_pain"), "en", None, 120)
    assert result["model"] == "whisper-tiny.en-int8" and "chest pain" in result["text"].casefold()


def test_bad_input_comes_back_as_a_problem_never_an_exception(worker: None):
    from tests.e2e.test_voice import silence_ogg

    good = clip("zh_potassium")
    assert engine.transcribe(b"\x89PNG\r\n\x1a\n" + bytes(4000), None, None, 120) == {"problem": "not_audio"}
    assert engine.transcribe(good[:300] + bytes(len(good) - 300), None, None, 120) == {"problem": "corrupt"}
    assert engine.transcribe(good[:2000], None, None, 120) == {"problem": "corrupt"}
    assert engine.transcribe(clip("zh_ward_round"), None, None, 10) == {"problem": "too_long"}
    assert engine.transcribe(silence_ogg(), None, None, 120) == {"problem": "silence"}
    assert engine.transcribe(b"", None, None, 120)["problem"] in ("not_audio", "corrupt")


def test_a_model_that_fails_its_checksum_is_refused(tmp_path: Path):
    good = models.packaged_base(VOICE_MODEL_CACHE)
    fake = tmp_path / "whisper-base"
    fake.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (fake / name).write_bytes((good.path / name).read_bytes())
    (fake / "model.bin").write_bytes(b"not the model")
    with pytest.raises(models.ModelUnavailable, match="SHA-256 of .* is [0-9a-f]{64}, expected d01c3014"):
        models.packaged_base(tmp_path)
    with pytest.raises(models.ModelUnavailable, match="expected 00000000"):
        models.hospital_model(fake, "0" * 64)
    assert models.hospital_model(good.path, models.BASE_SHA256).path == good.path
    with pytest.raises(models.ModelUnavailable, match="has no model.bin"):
        models.hospital_model(tmp_path / "empty", None)
