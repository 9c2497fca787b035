"""``!oncall swap``: two people trade shifts, stored as two covers.

A swap is not a third kind of roster change: A covering B's shift and B covering A's is exactly
what happened, and it keeps the roster index free of swap logic. Each half keeps its own role,
so a swap between, say, the day attending shift and the night registrar shift also works. The
halves are independent: cancelling a swap means removing both.
"""

from __future__ import annotations

from carematrix.oncall.model import Override, Shift


def swap(a: Shift, b: Shift, by: str) -> tuple[Override, Override]:
    """The two overrides for "``a.staff_number`` and ``b.staff_number`` trade these shifts"."""
    if a.staff_number == b.staff_number:
        raise ValueError(f"{a.staff_number} cannot swap a shift with themselves")
    takes_b = Override(b.role, a.staff_number, b.start, b.end, b.staff_number, by, "swap")
    takes_a = Override(a.role, b.staff_number, a.start, a.end, a.staff_number, by, "swap")
    return takes_b, takes_a
