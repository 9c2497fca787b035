"""Voice messages and their transcript replies, as Matrix content.

Element sends a voice message as ``m.room.message`` with ``msgtype: m.audio``, an
``org.matrix.msc3245.voice`` marker, Ogg/Opus audio and ``info.duration`` in milliseconds.
The service answers with an ``m.notice`` **reply** (a bot cannot edit another user's
message) carrying ``org.carematrix.transcript``: the language, the model and a confidence
figure, and the voice message's event ID — what the burn loop and no-forward read to treat
the transcript as part of the message it transcribes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from carematrix.policy.voice import PROMPT_CHARS
from carematrix.rules.protection import PRIORITY_FIELD, TRANSCRIPT_FIELD

VOICE_FLAG = "org.matrix.msc3245.voice"
#: Anything else with an audio MIME type (a recording attached as a file) is transcribed as
#: well; the flag only marks what Element's microphone button sends.
AUDIO_MSGTYPE = "m.audio"


@dataclass(frozen=True)
class VoiceMessage:
    url: str | None  # mxc:// of a plain upload
    encrypted: bool  # the file is end-to-end encrypted (``file``): the server cannot hear it
    duration_ms: int | None  # as the sender's client declared it
    mimetype: str
    size: int | None
    voice: bool  # sent with the microphone button (the MSC3245 flag)


def voice_message(content: Mapping[str, Any]) -> VoiceMessage | None:
    """The voice message in ``content``, or None if it is not audio at all. An edit or a
    transcript (ours, or one a client copied) is not a new voice message."""
    if content.get("msgtype") != AUDIO_MSGTYPE or TRANSCRIPT_FIELD in content:
        return None
    relates = content.get("m.relates_to")
    if isinstance(relates, Mapping) and relates.get("rel_type") == "m.replace":
        return None
    info = content.get("info") if isinstance(content.get("info"), Mapping) else {}
    assert isinstance(info, Mapping)
    file = content.get("file")
    encrypted = isinstance(file, Mapping)
    url = content.get("url") if isinstance(content.get("url"), str) else None
    duration = info.get("duration")
    size = info.get("size")
    return VoiceMessage(
        url=url,
        encrypted=encrypted,
        duration_ms=duration if isinstance(duration, int) and not isinstance(duration, bool) and duration >= 0 else None,
        mimetype=str(info.get("mimetype") or ""),
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        voice=VOICE_FLAG in content,
    )


def initial_prompt(glossary: tuple[str, ...], language: str | None) -> str | None:
    """The recogniser's initial prompt: the glossary introduced as the ward's words, cut to
    what the model reads. A Chinese list is joined with the ideographic comma, which also
    keeps the model in simplified characters (without a prompt it often writes traditional
    ones). Measured on the committed clips: "血钾、补钾、…" alone still gave 血甲; with the
    "病房常用词：" lead the model writes 血钾."""
    if not glossary:
        return "以下是普通话的句子。" if language == "zh" else None
    english = language == "en"
    lead, sep, end = ("Ward terms: ", ", ", ".") if english else ("病房常用词：", "、", "。")
    text = ""
    for term in glossary:
        candidate = f"{text}{sep}{term}" if text else term
        if len(lead) + len(candidate) > PROMPT_CHARS:
            break
        text = candidate
    return lead + text + end


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    model: str
    confidence: float  # 0..1, the recogniser's mean token probability over the speech
    duration_s: float
    language_probability: float | None = None


def percent(fraction: float) -> int:
    """0..1 as a whole percent, 0..100."""
    return max(0, min(100, round(fraction * 100)))


def transcript_content(voice_event_id: str, sender: str, transcript: Transcript) -> dict[str, Any]:
    """The transcript reply: an ``m.notice`` a client shows as a reply to the voice message,
    the recognised words alone in the body — so search, retention and no-forward treat them
    exactly as the words typed (a label in the body would make every short "收到" long
    enough to fingerprint, and the same label in two rooms look like a forward)."""
    return {
        "msgtype": "m.notice",
        "body": transcript.text,
        # A reply (shown under the voice message) and a reference: Synapse indexes the
        # reference, so the burn of the voice message finds its transcript.
        "m.relates_to": {"rel_type": "m.reference", "event_id": voice_event_id, "m.in_reply_to": {"event_id": voice_event_id}},
        "m.mentions": {"user_ids": [sender]} if sender.startswith("@") else {},
        PRIORITY_FIELD: "routine",
        # Matrix events carry no floats (canonical JSON): figures are whole percent.
        TRANSCRIPT_FIELD: {
            "event_id": voice_event_id,
            "language": transcript.language,
            "model": transcript.model,
            "confidence": percent(transcript.confidence),
            "duration_ms": round(transcript.duration_s * 1000),
            **({"language_probability": percent(transcript.language_probability)}
               if transcript.language_probability is not None else {}),
        },
    }


#: Why a voice message got no transcript, in the words a nurse reads (Chinese first).
PROBLEMS: dict[str, str] = {
    "not_audio": "无法转写：这不是音频文件。 Not transcribed: this is not an audio file.",
    "corrupt": "无法转写：音频文件已损坏或格式不支持。 Not transcribed: the audio is damaged or in an unsupported format.",
    "too_long": "无法转写：语音超过 {max_seconds} 秒上限，请直接收听。 Not transcribed: longer than the {max_seconds} s limit; please listen to it.",
    "silence": "无法转写：未听到语音。 Not transcribed: no speech was heard.",
    "busy": "转写队列已满，请直接收听。 Not transcribed: too many voice messages are waiting; please listen to it.",
    "encrypted": "端到端加密的语音无法在服务器转写。 End-to-end encrypted voice messages cannot be transcribed on the server.",
    "download": "无法转写：取不到音频文件。 Not transcribed: the audio file could not be fetched.",
    "failed": "无法转写：转写服务出错，请直接收听。 Not transcribed: the transcription service failed; please listen to it.",
    "gave_up": "无法转写：识别 {attempts} 次均中断，不再重试，请直接收听。 Not transcribed: recognition broke off {attempts} times and is not tried again; please listen to it.",
}


def problem_content(voice_event_id: str, problem: str, max_seconds: int, attempts: int = 3) -> dict[str, Any]:
    """The short notice, as a reply, that says why a voice message has no transcript
    (``attempts``: how often recognition broke off before it was given up)."""
    return {
        "msgtype": "m.notice",
        "body": "🎙 " + PROBLEMS[problem].format(max_seconds=max_seconds, attempts=attempts),
        "m.relates_to": {"m.in_reply_to": {"event_id": voice_event_id}},
        PRIORITY_FIELD: "routine",
        "org.carematrix.voice_problem": problem,
    }


def page_subject(duration_ms: int | None) -> str:
    """What a page opened by a voice message says it is about (the transcript follows as a
    reply in the page's room)."""
    seconds = f" {round(duration_ms / 1000)} s" if duration_ms else ""
    return f"语音消息{seconds}，转写随后 Voice message{seconds}, transcript follows"
