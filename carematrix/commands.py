"""What a command to the CareMatrix service looks like: one parser for the bot, which answers
commands, and for the homeserver's content protection, which must tell a command from
clinical text (docs/protection.md)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

PREFIX = "!"
# What a Chinese input method types for "!": staff do not switch their keyboard to English to
# ask the bot something. Such a message is a command only when a command the bot knows follows
# (a chat line opening "！！" or "！紧急" stays chat).
FULL_WIDTH_PREFIX = "\uff01"

# Every command the bot answers, with the most arguments it takes. ``None``: the arguments
# are the sender's own words (``!decision <text>``), so the message is content like any other.
COMMANDS: dict[str, int | None] = {
    "ping": 0,
    "help": 0,
    "quiet": 1,  # on|off
    "oncall": 5,  # [unit] | cover <role> until HH:MM [staff] | swap <role> <staff>
    "case": 10,  # open <patient id> [unit ...] | close
    "images": 1,  # <accession number or study UID>
    "ack": 1,  # <alert id>
    "call": 1,  # <role or person>
    "decision": None,
}

# An argument of a structured command is one identifier-like word: a unit, a role, a staff
# number, a patient ID, a study UID (up to 64 characters), a time. Policy IDs are ASCII;
# words in other scripts, or longer ones, are text rather than what the bot asks for.
_ARGUMENT = re.compile(r"[A-Za-z0-9_.:/@+-]{1,64}")


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...]


def parse_command(body: str) -> Command | None:
    """``!name arg ...`` → Command; anything else (ordinary chat) → None.

    Full-width forms a Chinese input method produces (``！ｏｎｃａｌｌ　ｉｃｕ``, ``!ack ３F9A1C``)
    read as their ASCII forms (NFKC), except in free-text arguments (``!decision``), which
    stay the sender's own words."""
    text = body.strip()
    full_width = text.startswith(FULL_WIDTH_PREFIX)
    if not (full_width or text.startswith(PREFIX)) or len(text) == 1:
        return None
    words = text[1:].split()
    if not words:
        return None
    name = unicodedata.normalize("NFKC", words[0]).lower()
    if full_width and name not in COMMANDS:
        return None
    args = tuple(words[1:]) if COMMANDS.get(name, 0) is None else tuple(
        unicodedata.normalize("NFKC", word) for word in words[1:]
    )
    return Command(name, args)


def structured_command(body: str) -> Command | None:
    """The command in ``body`` if it is one the bot knows, on one line, with no more than
    identifier-like arguments: such a message carries no clinical text, only a request to
    the service. Free-text commands, unknown ``!words`` and over-long commands → None."""
    if "\n" in body.strip():
        return None
    command = parse_command(body)
    if command is None:
        return None
    limit = COMMANDS.get(command.name)
    if limit is None or len(command.args) > limit:
        return None
    if not all(_ARGUMENT.fullmatch(arg) for arg in command.args):
        return None
    return command
