"""Parsing a policy edit in a child process, so the process that enforces it only rebuilds it.

A thread was not enough: a parse in a thread is Python code that holds the interpreter lock
in 5 ms slices (longer while a C call runs), and the event loop beside it waits for the lock
after every system call — tens to hundreds of milliseconds per reload in a busy Synapse or
appservice. A child process (``python -m carematrix.policy.parse_process DIR``) has its own
lock: it parses and validates, and writes the outcome to its standard output as pickles.
The parent's thread meanwhile only waits on the pipe. The child runs at a lower CPU
priority (``NICENESS``): every process of a deployment reloads the same edit at once, and on
a small server their children would otherwise take every core from the event loops for the
length of a parse.

What comes back is made cheap to take in: the policy without its staff, then the staff in
chunks of ``CHUNK`` people. Each chunk is one short C call (``pickle.loads``, well under a
millisecond), and between chunks the loop gets the lock back, where one pickle of the whole
policy would hold it for 10–30 ms. The policy is then assembled as the loader assembles it
(its ``__post_init__`` indexes staff and units), so it is the same value a parse in this
process gives, digest included. A broken policy comes back as its errors (file, line,
message), rebuilt into the same ``PolicyInvalid``.

If the child cannot run or dies, the parse runs in the calling thread as before, with a
warning: a reload must never be lost for want of a child process.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import carematrix
from carematrix.policy.errors import PolicyError, PolicyInvalid
from carematrix.policy.loader import load_policy
from carematrix.policy.model import Policy

log = logging.getLogger(__name__)

CHUNK = 250
NICENESS = 10
TIMEOUT_SECONDS = 120.0
_VERSION = 1
# Where this checkout's (or installation's) ``carematrix`` package is: the child imports the
# same code as the parent, whatever the parent's working directory and path.
_CODE_ROOT = str(Path(carematrix.__file__).resolve().parent.parent)


def command(directory: Path) -> list[str]:
    return [sys.executable, "-m", "carematrix.policy.parse_process", str(directory)]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_CODE_ROOT, env.get("PYTHONPATH")) if p)
    return env


def encode(outcome: Policy | PolicyInvalid) -> list[bytes]:
    """The outcome as separate pickles: a header, then (for a policy) its staff in chunks."""
    if isinstance(outcome, PolicyInvalid):
        return [pickle.dumps((_VERSION, "invalid", list(outcome.errors)), protocol=pickle.HIGHEST_PROTOCOL)]
    # The index fields are rebuilt by the receiver; the shell carries none of the staff.
    shell = dataclasses.replace(outcome, staff=(), _by_localpart={}, _subtrees={})
    staff = outcome.staff
    chunks = [pickle.dumps(staff[i:i + CHUNK], protocol=pickle.HIGHEST_PROTOCOL) for i in range(0, len(staff), CHUNK)]
    return [pickle.dumps((_VERSION, "policy", shell, len(chunks)), protocol=pickle.HIGHEST_PROTOCOL), *chunks]


def _frames(parts: list[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


def _unframe(data: bytes) -> list[bytes]:
    parts, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at:at + 8], "big")
        parts.append(data[at + 8:at + 8 + size])
        at += 8 + size
    if at != len(data):
        raise ValueError("truncated output")
    return parts


def decode(parts: list[bytes]) -> Policy | PolicyInvalid:
    """``encode``'s output back into the policy (or why it is invalid), chunk by chunk."""
    header: Any = pickle.loads(parts[0])
    if header[0] != _VERSION:
        raise ValueError(f"the parser speaks version {header[0]}, not {_VERSION}")
    if header[1] == "invalid":
        errors: list[PolicyError] = header[2]
        return PolicyInvalid(errors)
    shell: Policy = header[2]
    if len(parts) != 1 + header[3]:
        raise ValueError(f"{len(parts) - 1} staff chunks, {header[3]} announced")
    staff: list[Any] = []
    for chunk in parts[1:]:
        staff.extend(pickle.loads(chunk))  # one short C call; the loop may run between them
    return dataclasses.replace(shell, staff=tuple(staff), _by_localpart={}, _subtrees={})


def parse_in_child(directory: Path) -> Policy | PolicyInvalid:
    """Blocking (run it in a thread): parse ``directory`` in a child process; if that fails,
    here. Only the rebuild of the result runs in this process."""
    try:
        started = time.monotonic()
        done = subprocess.run(command(directory), capture_output=True, timeout=TIMEOUT_SECONDS, env=_child_env(),
                              check=False)
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise RuntimeError(f"exit status {done.returncode}: {' / '.join(tail) or 'no message'}")
        parsed = time.monotonic()
        outcome = decode(_unframe(done.stdout))
        log.info("Policy in %s parsed in a child process in %.2f s, taken in here in %.3f s", directory,
                 parsed - started, time.monotonic() - parsed)
        return outcome
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError, pickle.UnpicklingError, EOFError,
            IndexError, TypeError) as exc:
        log.warning("Parsing the policy in %s in a child process failed (%s); parsing it in this process", directory, exc)
    try:
        return load_policy(directory)
    except PolicyInvalid as exc:
        return exc


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m carematrix.policy.parse_process POLICY_DIR", file=sys.stderr)
        return 2
    gc.disable()  # a short-lived process: reference counting frees all it needs freed
    try:
        os.nice(NICENESS)  # the event loops of the processes that enforce the policy go first
    except OSError:
        pass  # not allowed here: parse at the priority we have
    try:
        outcome: Policy | PolicyInvalid = load_policy(Path(argv[0]))
    except PolicyInvalid as exc:
        outcome = exc
    sys.stdout.buffer.write(_frames(encode(outcome)))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
