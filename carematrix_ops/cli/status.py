"""``carematrix status``: health of a running stack."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from carematrix_ops.cli.common import EXIT_FAILED, EXIT_OK, default_data_dir
from carematrix_ops.deploy.record import load_existing
from carematrix_ops.deploy.settings import Deployment
from carematrix_ops.http import HttpError, redis_ping, request_json

# synapse_modules.policy_module: what each Synapse process enforces and how far it has seen
# the event stream.
POLICY_STATUS_PATH = "/_synapse/client/carematrix/policy"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="health of a running stack")
    status.add_argument("--data-dir", type=Path)
    status.set_defaults(func=cmd_status)


def worker_processes(deployment: Deployment) -> list[dict[str, Any]]:
    """Each Synapse process of a worker deployment, asked on its own socket: alive, the
    policy it enforces, whether it runs background work, and its replication lag (events
    it has not seen yet that another process has)."""
    from carematrix_ops.deploy import workers

    layout = workers.layout_for(deployment.settings, deployment.paths)
    rows: list[dict[str, Any]] = []
    for name in layout.names:
        listen = layout.public[name]
        row: dict[str, Any] = {"name": name, "ok": False, "where": str(listen)}
        try:
            health, _ = listen.get("/health")
            code, body = listen.get(POLICY_STATUS_PATH)
            row["ok"] = health == 200
            if code == 200:
                row.update(json.loads(body))
        except (OSError, ValueError) as exc:
            row["error"] = str(exc)
        rows.append(row)
    positions = [r["events_position"] for r in rows if "events_position" in r]
    for row in rows:
        if positions and "events_position" in row:
            row["lag_events"] = max(positions) - row["events_position"]
    return rows


def _print_workers(deployment: Deployment) -> bool:
    """One line per process of the worker deployment; False if any is down or enforces
    another policy than the others."""
    from carematrix_ops.deploy import workers

    s, ok = deployment.settings, True
    rows = worker_processes(deployment)
    digests = {r["digest"] for r in rows if "digest" in r}
    for r in rows:
        role = "background" if r.get("background_tasks") else ""
        if r["ok"]:
            detail = f"policy {r.get('digest', '?')[:12]}, lag {r.get('lag_events', '?')} events"
            print(f"  synapse {r['name']:<12} OK    {detail}{', ' + role if role else ''}")
        else:
            ok = False
            print(f"  synapse {r['name']:<12} DOWN  {r['where']}: {r.get('error', 'not healthy')}")
    if len(digests) > 1:
        ok = False
        print(f"  POLICY DIFFERS between processes ({len(digests)} versions): a reload has not reached every process")
    if s.redis:
        host, port = workers.parse_redis(s.redis)
        redis_ok = redis_ping(host=host, port=port, password=deployment.secrets.get(workers.REDIS_PASSWORD))
        where = s.redis
    else:
        redis_ok = redis_ping(str(workers.redis_socket(deployment.paths)))
        where = str(workers.redis_socket(deployment.paths))
    print(f"  redis                {'OK  ' if redis_ok else 'DOWN'}  {where}")
    return ok and redis_ok


def cmd_status(args: argparse.Namespace) -> int:
    deployment = load_existing(args.data_dir or default_data_dir())
    s = deployment.settings
    ok = True
    try:
        versions = request_json("GET", f"{s.homeserver_url}/_matrix/client/versions", timeout=5)
        request_json("GET", f"{s.homeserver_url}/health", timeout=5)
        layout = f"{s.database}, workers behind the proxy" if s.workers else s.database
        print(f"homeserver  OK    {s.homeserver_url} (spec {versions['versions'][-1]}, {layout})")
    except (HttpError, OSError, KeyError) as exc:
        ok = False
        print(f"homeserver  DOWN  {s.homeserver_url}: {exc}")
    if s.workers:
        ok = _print_workers(deployment) and ok
    try:
        # systems=1: the appservice also checks the HL7 listener, FHIR and the PACS (the same
        # answer the console's system page shows; appservice/systems_health.py).
        health = request_json("GET", f"{s.appservice_url}/_carematrix/health?systems=1", timeout=15)
        print(f"appservice  OK    {s.appservice_url} (bot {health['bot']}, policy {health['policy_digest'][:12]})")
        for line in health.get("policy_rejected_edit", []):
            print(f"  rejected policy edit: {line}")
        for item in health.get("undelivered", []):
            print(f"  UNDELIVERED {item['type']} {item['control_id']} from {item['source']}: {item['why']}")
        voice = health.get("voice")
        if isinstance(voice, dict):
            # Transcription off is not the stack down: voice messages get a notice (docs/voice.md).
            models = ", ".join(f"{v}" for v in (voice.get("models") or {}).values())
            detail = f"{models}, {voice.get('queued', 0)} queued" if voice.get("transcription") != "off" else voice.get("why", "")
            print(f"  voice transcription {voice.get('transcription')}: {detail}")
    except (HttpError, OSError, KeyError) as exc:
        ok = False
        print(f"appservice  DOWN  {s.appservice_url}: {exc}")
    else:
        ok = _print_systems(health.get("systems") or {}) and ok
    ok = _turn_status(deployment) and ok
    return EXIT_OK if ok else EXIT_FAILED


SYSTEM_LINES = (("hl7", "hl7"), ("fhir_sources", "fhir in"), ("fhir_server", "fhir emr"), ("pacs", "pacs"))


def _print_systems(systems: dict[str, Any]) -> bool:
    """One line per hospital system as the appservice found it; False if one is down."""
    ok = True
    for key, label in SYSTEM_LINES:
        found = systems.get(key)
        if not isinstance(found, dict):
            continue
        state = {True: "OK  ", False: "DOWN", None: "--  "}[found.get("ok")]
        ok = ok and found.get("ok") is not False
        print(f"{label:<11} {state}  {found.get('detail', '')}")
    return ok


def _turn_status(deployment: Deployment) -> bool:
    """coturn allocates a relay with credentials made from the deployment's secret, as the
    homeserver makes them for a phone: proves both that it runs and that the two agree."""
    from carematrix.stun import relay_check
    from carematrix_ops.deploy import turn

    found = turn.probe(deployment)
    if "off" in found:
        print(f"turn        --    {found['off']}")
        return True
    ok, detail = relay_check(found["host"], found["port"], found["secret"], found["uris"], time.time())
    print(f"turn        {'OK  ' if ok else 'DOWN'}  {detail}")
    return ok
