"""Bot commands as pure functions: text in, reply text out (parsing: carematrix.commands)."""

from __future__ import annotations

HELP = (
    "CareMatrix bot commands:\n"
    "!ping — check that the CareMatrix service is answering\n"
    "!help — this list\n"
    "!oncall [unit] — who holds each on-duty role now, and who is next\n"
    "!oncall cover <role> until HH:MM [staff number] — take over (or hand over) a role until then\n"
    "!oncall swap <role> <staff number> — trade your next shift of a role for theirs\n"
    "!ack <alert id> — acknowledge the page with that ID (the code in brackets on the page)\n"
    "!quiet on|off — silence work notifications while you are off duty (critical alerts still ring)\n"
    "!case open <patient id> [unit ...] — open a patient case (MDT) room with the ward's and those "
    "units' on-duty roles and the patient's summary\n"
    "!images <accession number or study UID> — post the study's key images into this case room\n"
    "!decision <text> — record a decision in this case room\n"
    "!case close — archive this case (FHIR Bundle + PDF to the EMR) and make the room read-only"
)


def reply_ping(latency_ms: float | None, policy_digest: str) -> str:
    lag = f"{latency_ms:.0f} ms after you sent it" if latency_ms is not None else "now"
    return f"pong — CareMatrix is up ({lag}); policy {policy_digest[:12]} in force."


def reply_unknown(name: str) -> str:
    return f"Unknown command '!{name}'. Send !help for the list."
