"""Who an auditor means by the "person" filter: a name, a staff number or a Matrix ID.

Records name their actor by Matrix ID (``@d1001:hospital``), but an auditor looking into what
李伟 did types 李伟, "Li Wei" or his staff number D1001. Searched as typed, that matched no
record and the empty result read as "李伟 did nothing". So the filter is resolved against the
staff list first: one person found is searched by their Matrix ID; several or none is said,
never searched. A Matrix ID (and ``anonymous``) is searched as given: people who left the
staff list keep their records under it."""

from __future__ import annotations

from collections.abc import Iterable

from carematrix.audit.search import AuditQueryInvalid
from carematrix.policy.org import Staff

ANONYMOUS = "anonymous"
_SHOWN = 8  # people listed when a name is shared


def _folded(text: str) -> str:
    return "".join(text.casefold().split())


def resolve_actor(typed: str, staff: Iterable[Staff], server_name: str) -> str:
    """The Matrix ID ``typed`` names: itself when it is one (or ``anonymous``); else the one
    staff member whose staff number it is, or whose name holds it (李伟, "li wei", "Liwei").
    Raises :class:`AuditQueryInvalid` saying who matched when that is not exactly one."""
    text = typed.strip()
    if text.startswith("@") or text == ANONYMOUS:
        return text
    people = list(staff)
    key = _folded(text)
    numbered = [s for s in people if s.staff_number.casefold() == key]
    named = numbered or [s for s in people if key and key in _folded(s.name)]
    if len(named) == 1:
        return f"@{named[0].localpart}:{server_name}"
    if not named:
        raise AuditQueryInvalid(
            f"员工名单中没有名为或工号为 '{text}' 的人员。Nobody on the staff list is named or numbered "
            f"'{text}': enter a name, a staff number or a Matrix ID (@user:{server_name}); people no "
            "longer on the staff list are found by their Matrix ID."
        )
    listed = "; ".join(f"{s.name} ({s.staff_number}, @{s.localpart}:{server_name})" for s in named[:_SHOWN])
    more = f"; and {len(named) - _SHOWN} more" if len(named) > _SHOWN else ""
    raise AuditQueryInvalid(
        f"'{text}' 对应 {len(named)} 名员工，请输入工号。'{text}' names {len(named)} people: {listed}{more}. "
        "Enter one's staff number or Matrix ID."
    )


def actor_names(actors: Iterable[str], staff: Iterable[Staff], server_name: str) -> dict[str, str]:
    """The staff list's name for each local actor ID among ``actors`` (for the console's
    result table: an auditor reads 李伟, not @d1001)."""
    by_id = {f"@{s.localpart}:{server_name}": s.name for s in staff}
    return {a: by_id[a] for a in actors if a in by_id}
