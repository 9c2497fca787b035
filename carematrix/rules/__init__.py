"""Pure policy decisions: plain data in, a ``Verdict`` out. No Synapse imports here."""

from carematrix.rules.verdict import ALLOW, Verdict

__all__ = ["ALLOW", "Verdict"]
