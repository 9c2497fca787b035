"""Load and validate a policy directory (``policies/*.yaml``) into a ``Policy``.

Every problem is collected, not just the first, so ``carematrix policy check`` can show an
admin all of them at once. A directory either loads completely or not at all: callers keep
the last good policy when this raises.

This module only reads the files and finds each top-level section; the sections are built and
checked by their own modules (``org``, ``rooms``, ``oncall``, ``clinical``, ``devices``, ``voice``), in that order,
because each later one refers to what the earlier ones define.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from carematrix.policy import clinical, devices, oncall, org, rooms, voice
from carematrix.policy.checker import Checker, Section, Sections
from carematrix.policy.errors import PolicyError, PolicyInvalid
from carematrix.policy.model import Policy
from carematrix.policy.yamlsrc import YamlSyntaxError, parse_yaml

SECTIONS = org.SECTIONS + rooms.SECTIONS + oncall.SECTIONS + clinical.SECTIONS + devices.SECTIONS + voice.SECTIONS
POLICY_SUFFIXES = (".yaml", ".yml")


def policy_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file())


def policy_fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detector (name, mtime, size) polled by long-running processes."""
    try:
        files = policy_files(directory)
    except OSError:
        return ()
    out = []
    for p in files:
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _add_file(sections: Sections, name: str, text: str) -> None:
    """Record the top-level sections of one file; a section may be defined in one file only."""
    checker = Checker(name, sections.errors)
    try:
        doc = parse_yaml(text)
    except YamlSyntaxError as exc:
        checker.error(exc.line, exc.message)
        return
    if doc is None:
        return
    data = checker.mapping(doc, 1, "a policy file")
    if data is None:
        return
    checker.keys(data, SECTIONS, "a policy file (top level)")
    for key in SECTIONS:
        if key not in data:
            continue
        if key in sections.found:
            other = sections.found[key]
            checker.error(
                data.line_of(key),
                f"section '{key}' is already defined in {other.checker.file}:{other.line}",
            )
            continue
        sections.found[key] = Section(data[key], checker, data.line_of(key))


def _build(sections: Sections, digest: str) -> Policy:
    org_part = org.parse_org(sections)
    rooms_part = rooms.parse_rooms(sections, org_part)
    oncall_part = oncall.parse_oncall(sections, org_part)
    clinical_part = clinical.parse_clinical(sections, org_part, oncall_part)
    devices_part = devices.parse_devices(sections, org_part, oncall_part, clinical_part)
    voice_part = voice.parse_voice(sections, org_part)
    if sections.errors:
        raise PolicyInvalid(sections.errors)
    return Policy(
        hospital_name=org_part.hospital_name,
        roles=org_part.roles,
        units=org_part.units,
        staff=org_part.staff,
        room_classes=rooms_part.room_classes,
        digest=digest,
        display_name_format=org_part.display_name_format,
        standard_rooms=rooms_part.standard_rooms,
        default_room_class=rooms_part.default_room_class,
        default_direct_class=rooms_part.default_direct_class,
        burn_defaults=rooms_part.burn_defaults,
        oncall=oncall_part,
        clinical=clinical_part,
        devices=devices_part,
        voice=voice_part,
    )


def _read_dir(directory: Path) -> tuple[list[tuple[str, str]], list[PolicyError]]:
    errors: list[PolicyError] = []
    if not directory.is_dir():
        return [], [PolicyError(str(directory), 0, "policy directory does not exist")]
    files = []
    try:
        paths = policy_files(directory)
    except OSError as exc:
        return [], [PolicyError(str(directory), 0, f"cannot list policy directory: {exc.strerror}")]
    if not paths:
        errors.append(PolicyError(str(directory), 0, "no policy files (*.yaml) in this directory"))
    for path in paths:
        try:
            files.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(PolicyError(str(path), 0, f"cannot read file: {exc}"))
    return files, errors


def load_policy(directory: Path | str) -> Policy:
    """Load every ``*.yaml`` file in ``directory`` as one policy, or raise ``PolicyInvalid``."""
    files, errors = _read_dir(Path(directory))
    if errors:
        raise PolicyInvalid(errors)
    return load_policy_texts(files)


def load_policy_texts(files: list[tuple[str, str]]) -> Policy:
    """Same as ``load_policy`` over (name, text) pairs; the pure core used by unit tests."""
    digest = hashlib.sha256()
    sections = Sections(first_file=files[0][0] if files else "policies", errors=[])
    for name, text in files:
        digest.update(Path(name).name.encode() + b"\0" + text.encode() + b"\0")
        _add_file(sections, name, text)
    return _build(sections, digest.hexdigest())


def validate_policy_dir(directory: Path | str) -> list[PolicyError]:
    try:
        load_policy(directory)
    except PolicyInvalid as exc:
        return exc.errors
    return []
