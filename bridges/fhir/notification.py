"""FHIR Subscription notifications, in the three shapes hospital FHIR servers send them.

- R5: a ``subscription-notification`` Bundle whose first entry is a SubscriptionStatus;
- R4B: the same SubscriptionStatus, in a ``history`` Bundle;
- R4 with the Subscriptions Backport IG: a ``history`` Bundle whose first entry is a
  Parameters resource with the backport-subscription-status-r4 profile.

All three are read into one ``Notification``, so the receiver routes the same way whichever
server version the hospital runs. The resources an event points at are not validated here:
the receiver validates each against its source's allow-list like a pushed resource.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bridges.fhir.outcome import BAD_REQUEST, FhirInvalid, Issue
from bridges.fhir.validate import parse_datetime, reference_key, reference_parts

__all__ = ["BACKPORT_STATUS_PROFILE", "NOTIFICATION_TYPES", "Notification",
           "NotificationEvent", "parse_notification"]

BACKPORT_STATUS_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "backport-subscription-status-r4"
)
NOTIFICATION_TYPES = ("handshake", "heartbeat", "event-notification", "query-status",
                      "query-event")
# The kinds whose notificationEvents name resources; the others only tell us the
# subscription is alive (or ask for nothing).
_EVENT_KINDS = frozenset({"event-notification", "query-event"})
_BUNDLE_TYPES = ("subscription-notification", "history")


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    """``focus`` is ``Type/id`` (an absolute or versioned reference is shortened to it), the
    key for fetching the resource from the hospital's server; ``resource`` is the resource
    itself when the notification carries it (full-resource content), None for id-only."""

    number: str
    focus: str
    resource: dict | None
    timestamp: datetime | None = None
    context: tuple[str, ...] = ()  # additionalContext references, as Type/id


@dataclass(frozen=True, slots=True)
class Notification:
    """``included`` holds every resource the Bundle carries besides the status, by
    ``Type/id``, so an event's Observation can find its Patient or Encounter."""

    kind: str
    subscription: str
    topic: str
    events: tuple[NotificationEvent, ...]
    included: dict[str, dict]
    status: str = ""
    events_since_start: str = ""


@dataclass(slots=True)
class _RawEvent:
    number: Any
    focus: Any
    timestamp: Any
    context: list[Any]
    number_path: str
    focus_path: str
    timestamp_path: str


def parse_notification(bundle: Any) -> Notification:
    """Everything wrong is reported at once, each issue at its element (for example
    ``Bundle.entry[0].resource.notificationEvent[1].focus``), with HTTP 400: a notification
    we cannot read is malformed, not merely unprocessable."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise _invalid("structure", "a Subscription notification must be a Bundle", "Bundle")
    issues: list[Issue] = []
    kind_of_bundle = bundle.get("type")
    if kind_of_bundle not in _BUNDLE_TYPES:
        issues.append(_issue(
            "value",
            f"Bundle.type {kind_of_bundle!r} is not a notification (expected "
            "subscription-notification for R5, history for R4B and the R4 backport)",
            "Bundle.type",
        ))
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        issues.append(_issue(
            "required", "the notification has no entries: the first must be its "
            "SubscriptionStatus", "Bundle.entry"))
        raise FhirInvalid(issues, BAD_REQUEST)
    first = entries[0]
    status_resource = first.get("resource") if isinstance(first, dict) else None
    if not isinstance(status_resource, dict):
        status_resource = {}
    root = "Bundle.entry[0].resource"
    status_type = status_resource.get("resourceType")
    if status_type == "SubscriptionStatus":
        fields, raw_events = _read_subscription_status(status_resource, root, issues)
    elif status_type == "Parameters" and _is_backport(status_resource):
        fields, raw_events = _read_backport(status_resource, root, issues)
    else:
        issues.append(_issue(
            "structure",
            "the first entry must be a SubscriptionStatus (R4B/R5) or a Parameters resource "
            f"with the profile {BACKPORT_STATUS_PROFILE} (R4 backport), got "
            f"{status_type or 'no resource'}",
            root,
        ))
        raise FhirInvalid(issues, BAD_REQUEST)

    included, by_url = _index(entries, issues)
    kind = fields.get("type")
    if not isinstance(kind, str) or kind not in NOTIFICATION_TYPES:
        issues.append(_issue(
            "value" if kind else "required",
            f"notification type {kind!r} is not one of {', '.join(NOTIFICATION_TYPES)}",
            fields.get("type_path", f"{root}.type"),
        ))
    subscription = fields.get("subscription")
    if not isinstance(subscription, str) or not subscription:
        issues.append(_issue(
            "required", "the notification does not say which Subscription it is for",
            fields.get("subscription_path", f"{root}.subscription"),
        ))
    events: list[NotificationEvent] = []
    if isinstance(kind, str) and kind in _EVENT_KINDS:
        if not raw_events and kind == "event-notification":
            issues.append(_issue(
                "required", "an event-notification must list its events",
                fields.get("events_path", f"{root}.notificationEvent"),
            ))
        events = [
            event for raw in raw_events
            if (event := _event(raw, included, by_url, issues)) is not None
        ]
    if issues:
        raise FhirInvalid(issues, BAD_REQUEST)
    return Notification(
        kind=str(kind),
        subscription=str(subscription),
        topic=_text(fields.get("topic")),
        events=tuple(events),
        included=included,
        status=_text(fields.get("status")),
        events_since_start=_text(fields.get("events_since_start")),
    )


def _read_subscription_status(
    resource: dict, root: str, issues: list[Issue]
) -> tuple[dict[str, Any], list[_RawEvent]]:
    subscription = resource.get("subscription")
    fields: dict[str, Any] = {
        "type": resource.get("type"),
        "type_path": f"{root}.type",
        "subscription": subscription.get("reference") if isinstance(subscription, dict)
        else None,
        "subscription_path": f"{root}.subscription.reference",
        "topic": resource.get("topic"),
        "status": resource.get("status"),
        "events_since_start": resource.get("eventsSinceSubscriptionStart"),
        "events_path": f"{root}.notificationEvent",
    }
    listed = resource.get("notificationEvent")
    if listed is None:
        return fields, []
    if not isinstance(listed, list):
        issues.append(_issue("structure", "notificationEvent must be an array",
                             f"{root}.notificationEvent"))
        return fields, []
    raw_events = []
    for index, item in enumerate(listed):
        path = f"{root}.notificationEvent[{index}]"
        if not isinstance(item, dict):
            issues.append(_issue("structure", f"{path} must be an object", path))
            continue
        focus = item.get("focus")
        context = item.get("additionalContext")
        raw_events.append(_RawEvent(
            number=item.get("eventNumber"),
            focus=focus.get("reference") if isinstance(focus, dict) else focus,
            timestamp=item.get("timestamp"),
            context=[c.get("reference") for c in context if isinstance(c, dict)]
            if isinstance(context, list) else [],
            number_path=f"{path}.eventNumber",
            focus_path=f"{path}.focus",
            timestamp_path=f"{path}.timestamp",
        ))
    return fields, raw_events


def _read_backport(
    resource: dict, root: str, issues: list[Issue]
) -> tuple[dict[str, Any], list[_RawEvent]]:
    parameters = resource.get("parameter")
    if not isinstance(parameters, list):
        issues.append(_issue("required", "the subscription status has no parameters",
                             f"{root}.parameter"))
        return {}, []
    fields: dict[str, Any] = {
        "type_path": f"{root}.parameter",
        "subscription_path": f"{root}.parameter",
        "events_path": f"{root}.parameter",
    }
    names = {"subscription": "subscription", "topic": "topic", "status": "status",
             "type": "type", "events-since-subscription-start": "events_since_start"}
    raw_events = []
    for index, parameter in enumerate(parameters):
        path = f"{root}.parameter[{index}]"
        if not isinstance(parameter, dict):
            issues.append(_issue("structure", f"{path} must be an object", path))
            continue
        name = parameter.get("name")
        if isinstance(name, str) and name in names:
            value = _value(parameter)
            if isinstance(value, dict):  # valueReference
                value = value.get("reference")
            fields[names[name]] = value
            fields[f"{names[name]}_path"] = f"{path}.value"
        elif name == "notification-event":
            raw_events.append(_backport_event(parameter, path))
    return fields, raw_events


def _backport_event(parameter: dict, path: str) -> _RawEvent:
    event = _RawEvent(None, None, None, [], f"{path}.part", f"{path}.part", f"{path}.part")
    parts = parameter.get("part")
    for index, part in enumerate(parts if isinstance(parts, list) else []):
        if not isinstance(part, dict):
            continue
        name, value = part.get("name"), _value(part)
        where = f"{path}.part[{index}].value"
        if name == "event-number":
            event.number, event.number_path = value, where
        elif name == "timestamp":
            event.timestamp, event.timestamp_path = value, where
        elif name == "focus":
            event.focus = value.get("reference") if isinstance(value, dict) else value
            event.focus_path = where
        elif name == "additional-context" and isinstance(value, dict):
            event.context.append(value.get("reference"))
    return event


def _event(
    raw: _RawEvent, included: dict[str, dict], by_url: dict[str, dict], issues: list[Issue]
) -> NotificationEvent | None:
    before = len(issues)
    number = raw.number
    if isinstance(number, int) and not isinstance(number, bool):
        number = str(number)
    if not isinstance(number, str) or not number.strip():
        issues.append(_issue("required", "the event has no event number", raw.number_path))
    focus = raw.focus
    resource = None
    if not isinstance(focus, str) or not focus:
        issues.append(_issue(
            "required", "the event does not name its focus resource", raw.focus_path))
    else:
        resource = by_url.get(focus) or included.get(reference_key(focus))
        if resource is not None and resource.get("id"):
            focus = f"{resource['resourceType']}/{resource['id']}"
        elif not reference_parts(focus)[0]:
            issues.append(_issue(
                "value",
                f"focus {focus!r} is neither a Type/id reference nor a resource in the Bundle",
                raw.focus_path,
            ))
        else:
            focus = reference_key(focus)
    try:
        timestamp = parse_datetime(raw.timestamp, raw.timestamp_path)
    except FhirInvalid as exc:
        issues.extend(exc.issues)
        timestamp = None
    if len(issues) > before:
        return None
    return NotificationEvent(
        number=str(number).strip(),
        focus=str(focus),
        resource=resource,
        timestamp=timestamp,
        context=tuple(reference_key(c) for c in raw.context if isinstance(c, str) and c),
    )


def _index(entries: list[Any], issues: list[Issue]) -> tuple[dict[str, dict], dict[str, dict]]:
    """(resources by Type/id, resources by their entry's fullUrl). The fullUrl map lets an
    event whose focus is the entry's urn:uuid or absolute URL find its resource."""
    included: dict[str, dict] = {}
    by_url: dict[str, dict] = {}
    for index, entry in enumerate(entries[1:], start=1):
        path = f"Bundle.entry[{index}]"
        if not isinstance(entry, dict):
            issues.append(_issue("structure", f"{path} must be an object", path))
            continue
        resource = entry.get("resource")
        if resource is None:
            continue  # id-only content may list entries with just a fullUrl and request
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            issues.append(_issue("structure", f"{path}.resource is not a FHIR resource",
                                 f"{path}.resource"))
            continue
        if resource.get("id"):
            included[f"{resource['resourceType']}/{resource['id']}"] = resource
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and full_url:
            by_url[full_url] = resource
            if reference_parts(full_url)[0] == resource["resourceType"]:
                included.setdefault(reference_key(full_url), resource)
    return included, by_url


def _is_backport(resource: dict) -> bool:
    meta = resource.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    return isinstance(profiles, list) and any(
        isinstance(p, str) and p.split("|", 1)[0] == BACKPORT_STATUS_PROFILE for p in profiles
    )


def _value(element: dict) -> Any:
    """The value of a Parameters parameter or part, whatever its [x] type: backport
    versions differ (event-number is valueString in STU1.1, an integer type before)."""
    for key, value in element.items():
        if key.startswith("value") and key != "value":
            return value
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _issue(code: str, diagnostics: str, expression: str) -> Issue:
    return Issue("error", code, diagnostics, expression)


def _invalid(code: str, diagnostics: str, expression: str) -> FhirInvalid:
    return FhirInvalid([_issue(code, diagnostics, expression)], BAD_REQUEST)
