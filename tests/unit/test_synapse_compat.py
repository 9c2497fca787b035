"""Guards the Synapse behaviour synapse_modules/compat.py relies on; fails on an upgrade that
changes it, before clinicians see generic refusals."""

from synapse.api.errors import SynapseError

from carematrix.rules import Verdict
from synapse_modules.compat import refusal_with_reason


def test_extra_error_field_replaces_synapses_generic_message():
    code, fields = refusal_with_reason(Verdict(False, "room_class.department.scope", "Only ICU staff may join this room."))
    body = SynapseError(403, "Not allowed to join this room", errcode=code, additional_fields=fields).error_dict(None)
    assert body["errcode"] == "M_FORBIDDEN"
    assert body["error"] == "Only ICU staff may join this room. [rule room_class.department.scope]"
    assert body["org.carematrix.rule"] == "room_class.department.scope"
