"""FHIR R4 inbound adapter: resources pushed by hospital systems (REST) and Subscription
notifications in, typed clinical records and OperationOutcomes out.

Pure functions over bytes and plain data; the appservice owns the HTTP endpoint and runs
``parse_json`` -> ``validate_resource`` / ``validate_bundle_entries`` / ``parse_notification``
-> store -> ``extract_resource`` -> route, answering refusals with
``operation_outcome(exc.issues)`` and ``exc.status``.
"""

from __future__ import annotations

from bridges.fhir.events import Event, extract_resource
from bridges.fhir.notification import Notification, NotificationEvent, parse_notification
from bridges.fhir.outcome import FhirInvalid, Issue, ok_outcome, operation_outcome
from bridges.fhir.validate import (
    RESOURCE_TYPES,
    parse_json,
    validate_bundle_entries,
    validate_resource,
)

__all__ = [
    "RESOURCE_TYPES",
    "Event",
    "FhirInvalid",
    "Issue",
    "Notification",
    "NotificationEvent",
    "extract_resource",
    "ok_outcome",
    "operation_outcome",
    "parse_json",
    "parse_notification",
    "validate_bundle_entries",
    "validate_resource",
]
