"""Signed checkpoints: an Ed25519 signature over the chain head at a moment in time.

The hash chain alone shows that records were edited or removed *inside* the log; it cannot
show that the newest records were cut off, because a shortened chain is still a valid
chain. A checkpoint signs (seq, hash) of the head with a key the database does not hold,
so a log that ends before a signed checkpoint, or differs from it, is reported by verify.

Checkpoints stored in the same database protect against accidental or naive truncation.
Against someone who can also delete checkpoint rows, keep copies elsewhere: every
checkpoint is a small JSON object (:meth:`Checkpoint.to_json`) for the syslog collector or
a printout, and ``verify`` accepts such copies as ``extra_checkpoints``.

Key files use Synapse's signing-key format (``ed25519 <version> <base64 seed>``), written
with mode 600; the verify key exports as one line ``ed25519:<version> <base64>``.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nacl.exceptions import BadSignatureError
from signedjson.key import (
    decode_verify_key_bytes,
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
    read_signing_keys,
    write_signing_keys,
)
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64, encode_base64

from carematrix.audit.chain import canonical_json
from carematrix.audit.record import now_us
from carematrix.audit.walk import ChainWalker
from carematrix.hsdb.audit_store import CHECKPOINT, AuditStoreError, check_dialect, head, sql
from carematrix.hsdb.audit_store import iter_rows as _iter_rows

# Domain separation: this signature can never be mistaken for a Matrix event or key signature.
SIGNATURE_TYPE = "carematrix.audit.checkpoint"


class AuditKeyError(Exception):
    """A key file that cannot be used; the message says what to fix."""


class AuditChainBroken(Exception):
    """Refused to sign: the records since the last checkpoint do not form a valid chain."""

    def __init__(self, seq: int, problem: str) -> None:
        self.seq = seq
        self.problem = problem
        super().__init__(problem)


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    signed_at: int  # UTC microseconds
    key_id: str  # "ed25519:<version>"
    signature: str  # unpadded base64

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        try:
            return cls(
                seq=int(data["seq"]),
                hash=str(data["hash"]),
                signed_at=int(data["signed_at"]),
                key_id=str(data["key_id"]),
                signature=str(data["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a checkpoint: {exc}") from exc


def signed_payload(seq: int, hash_hex: str, signed_at: int, key_id: str) -> bytes:
    """The exact bytes a checkpoint signature covers (canonical JSON)."""
    return canonical_json(
        {
            "hash": hash_hex,
            "key_id": key_id,
            "seq": seq,
            "signed_at": signed_at,
            "type": SIGNATURE_TYPE,
        }
    )


def key_id(key: SigningKey | VerifyKey) -> str:
    return f"{key.alg}:{key.version}"


def sign(signing_key: SigningKey, seq: int, hash_hex: str, signed_at: int) -> Checkpoint:
    kid = key_id(signing_key)
    signature = signing_key.sign(signed_payload(seq, hash_hex, signed_at, kid)).signature
    return Checkpoint(seq, hash_hex, signed_at, kid, encode_base64(signature))


def signature_problem(cp: Checkpoint, verify_keys: Mapping[str, VerifyKey]) -> str | None:
    """Why ``cp`` is not a valid signature by one of ``verify_keys``, or None if it is."""
    vk = verify_keys.get(cp.key_id)
    if vk is None:
        known = ", ".join(sorted(verify_keys)) or "none given"
        return (
            f"checkpoint at record {cp.seq} is signed by key {cp.key_id}, which is not a "
            f"trusted audit verify key (trusted: {known})"
        )
    try:
        vk.verify(
            signed_payload(cp.seq, cp.hash, cp.signed_at, cp.key_id), decode_base64(cp.signature)
        )
    except (BadSignatureError, ValueError):
        return f"checkpoint at record {cp.seq} has a bad signature (forged or edited?)"
    return None


def list_checkpoints(txn: Any, dialect: str) -> list[Checkpoint]:
    check_dialect(dialect)
    txn.execute(f"SELECT seq, hash, signed_at, key_id, signature FROM {CHECKPOINT} ORDER BY seq")
    return [Checkpoint(int(r[0]), r[1], int(r[2]), r[3], r[4]) for r in txn.fetchall()]


def latest_checkpoint(txn: Any, dialect: str) -> Checkpoint | None:
    check_dialect(dialect)
    txn.execute(
        f"SELECT seq, hash, signed_at, key_id, signature FROM {CHECKPOINT} "
        "ORDER BY seq DESC LIMIT 1"
    )
    r = txn.fetchone()
    return Checkpoint(int(r[0]), r[1], int(r[2]), r[3], r[4]) if r else None


def make_checkpoint(
    txn: Any,
    dialect: str,
    signing_key: SigningKey,
    signed_at: int | None = None,
) -> Checkpoint | None:
    """Sign the current head and store the checkpoint; None while the log is empty.

    Only what has been checked gets signed: the records since the previous checkpoint are
    walked first (a few thousand rows between periodic checkpoints), and a broken stretch
    raises :class:`AuditChainBroken` instead of vouching for it. Signing an unchanged head
    again returns the existing checkpoint, so any worker may call this on a timer.
    """
    check_dialect(dialect)
    head_seq, head_hash = head(txn, dialect)
    if head_seq == 0:
        return None
    previous = latest_checkpoint(txn, dialect)
    if previous is not None and previous.seq >= head_seq:
        if previous.seq == head_seq:
            return previous
        raise AuditChainBroken(
            head_seq + 1,
            f"log head is at {head_seq} but checkpoint at {previous.seq} was signed (truncated?)",
        )
    walker = ChainWalker(previous.seq, previous.hash) if previous is not None else ChainWalker()
    for row in _iter_rows(txn, dialect, after_seq=walker.last_seq):
        if row[0] > head_seq:
            break
        broken = walker.feed(row)
        if broken is not None:
            raise AuditChainBroken(broken.seq, broken.problem)
    if walker.last_seq != head_seq or walker.last_hash != head_hash:
        raise AuditChainBroken(
            walker.last_seq + 1,
            f"log ends at {walker.last_seq} but its head row says {head_seq} (truncated?)",
        )
    cp = sign(signing_key, head_seq, head_hash, now_us() if signed_at is None else signed_at)
    txn.execute(
        sql(
            f"INSERT INTO {CHECKPOINT} (seq, hash, signed_at, key_id, signature) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (seq) DO NOTHING",
            dialect,
        ),
        (cp.seq, cp.hash, cp.signed_at, cp.key_id, cp.signature),
    )
    # Another worker may have signed the same head a moment earlier: theirs stands.
    txn.execute(
        sql(
            f"SELECT seq, hash, signed_at, key_id, signature FROM {CHECKPOINT} WHERE seq = ?",
            dialect,
        ),
        (cp.seq,),
    )
    r = txn.fetchone()
    if r is None:
        raise AuditStoreError(f"checkpoint at {cp.seq} vanished from {CHECKPOINT}")
    return Checkpoint(int(r[0]), r[1], int(r[2]), r[3], r[4])


# --- key files -----------------------------------------------------------------------------


def load_or_create_signing_key(path: Path | str) -> SigningKey:
    """The audit signing key at ``path``, created (mode 600) on first use.

    A key file readable by group or others is refused: whoever can read it can forge
    checkpoints.
    """
    path = Path(path)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise AuditKeyError(
                f"audit signing key {path} is readable by others (mode {mode:o}); "
                f"run: chmod 600 {path}"
            )
        try:
            with path.open() as fh:
                keys = read_signing_keys(fh)
        except (OSError, ValueError) as exc:
            raise AuditKeyError(f"cannot read audit signing key {path}: {exc}") from exc
        if len(keys) != 1:
            raise AuditKeyError(f"{path} must hold exactly one key, found {len(keys)}")
        return keys[0]
    key = generate_signing_key("audit_" + secrets.token_hex(4))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        write_signing_keys(fh, [key])
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return key


def export_verify_key(signing_key: SigningKey) -> str:
    """One line, ``ed25519:<version> <base64>``: give it to whoever verifies the log."""
    vk = get_verify_key(signing_key)
    return f"{key_id(signing_key)} {encode_verify_key_base64(vk)}"


def parse_verify_key(line: str) -> tuple[str, VerifyKey]:
    parts = line.split()
    if len(parts) != 2 or ":" not in parts[0]:
        raise AuditKeyError(f"verify key line {line!r} must look like 'ed25519:<version> <base64>'")
    kid, b64 = parts
    try:
        return kid, decode_verify_key_bytes(kid, decode_base64(b64))
    except Exception as exc:  # signedjson raises several types for bad input
        raise AuditKeyError(f"verify key {kid} is not a valid Ed25519 key: {exc}") from exc


def load_verify_keys(lines: Iterable[str] | Path | str) -> dict[str, VerifyKey]:
    """Trusted verify keys from a file (or lines): one per line, ``#`` comments allowed.

    Keep old keys in the file after a rotation, so older checkpoints still verify.
    """
    if isinstance(lines, Path | str):
        lines = Path(lines).read_text().splitlines()
    keys: dict[str, VerifyKey] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            kid, vk = parse_verify_key(line)
            keys[kid] = vk
    return keys
