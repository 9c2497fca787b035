"""The recogniser, run in worker processes (never in the appservice's event loop): each
worker loads the verified models once (``init_worker``) and then transcribes one voice
message per call (``transcribe``), returning plain data.

Audio is decoded by PyAV (FFmpeg's libraries inside the wheel: Ogg/Opus, and whatever else a
client attaches) to 16 kHz mono. Every way a message can fail comes back as a ``problem``
name (carematrix.voice.messages.PROBLEMS), never as an exception that could take the worker
down: not audio at all, damaged audio, longer than the policy allows, or no speech heard."""

from __future__ import annotations

import io
import logging
import math
import os
import threading
import time
from typing import Any

log = logging.getLogger("carematrix.appservice.voice")

SAMPLE_RATE = 16000
#: Peak below this (of full scale) is silence whatever the voice-activity detector says.
SILENT_PEAK = 0.003
BEAM_SIZE = 5

_models: dict[str, Any] = {}
_names: dict[str, str] = {}


def init_worker(models: dict[str, tuple[str, str]], threads: int) -> None:
    """Load each model (key -> (name, directory)) with CTranslate2 int8 on the CPU. Runs
    once per worker process, before its first job."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    _exit_with_parent()
    from faster_whisper import WhisperModel

    for key, (name, path) in models.items():
        _models[key] = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)
        _names[key] = name


def _exit_with_parent() -> None:
    """A worker outlives an appservice killed with SIGKILL (its pool never says goodbye):
    it watches its parent and leaves when the parent is gone, holding no model in memory
    for nobody."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def die(*_: Any) -> dict[str, Any]:
    """A worker dying on the message it was given, as one killed for its memory would (the
    ``voice_worker_dies`` hold of drills and tests, appservice.holds)."""
    os._exit(70)


def warm_up() -> bool:
    """Nothing to do but prove the worker started and loaded its models."""
    return bool(_models)


def _decode(data: bytes, max_seconds: int) -> tuple[Any, str | None]:
    import av
    import numpy as np

    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                return None, "not_audio"
            declared = container.duration  # microseconds, when the container says
            if declared is not None and declared / 1_000_000 > max_seconds + 1:
                return None, "too_long"
    except av.error.FFmpegError:
        return None, "not_audio" if not data[:4] == b"OggS" else "corrupt"
    from faster_whisper.audio import decode_audio

    try:
        audio = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, ValueError, RuntimeError):
        return None, "corrupt"
    if audio.size == 0:
        return None, "corrupt"
    if audio.size / SAMPLE_RATE > max_seconds + 1:
        return None, "too_long"
    if float(np.max(np.abs(audio))) < SILENT_PEAK:
        return None, "silence"
    return audio, None


def transcribe(data: bytes, language: str | None, prompt: str | None, max_seconds: int) -> dict[str, Any]:
    """One voice message: ``language`` "zh"/"en" or None (detect). Returns ``problem`` or
    the transcript with its language, model, confidence (mean token probability over the
    speech, weighted by segment length) and timings."""
    started = time.perf_counter()
    audio, problem = _decode(data, max_seconds)
    if problem is not None:
        return {"problem": problem}
    key = "en" if language == "en" and "en" in _models else "main"
    model = _models[key]
    segments, info = model.transcribe(
        audio, language=language, initial_prompt=prompt, beam_size=BEAM_SIZE, vad_filter=True,
        condition_on_previous_text=False,
    )
    texts, weights, probs = [], [], []
    for seg in segments:
        texts.append(seg.text)
        weights.append(max(seg.end - seg.start, 0.01))
        probs.append(math.exp(seg.avg_logprob))
    text = "".join(texts).strip()
    if not text:
        return {"problem": "silence"}
    confidence = sum(p * w for p, w in zip(probs, weights, strict=True)) / sum(weights)
    return {
        "text": text,
        "language": info.language,
        "language_probability": float(info.language_probability),
        "model": _names[key],
        "confidence": float(confidence),
        "duration_s": float(audio.size / SAMPLE_RATE),
        "seconds": time.perf_counter() - started,
    }
