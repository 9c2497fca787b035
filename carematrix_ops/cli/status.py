"""``carematrix status``: health of a running stack."""

from __future__ import annotations

import argparse
from pathlib import Path

from carematrix_ops.cli.common import EXIT_FAILED, EXIT_OK, default_data_dir
from carematrix_ops.deploy.record import load_existing
from carematrix_ops.http import HttpError, request_json


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="health of a running stack")
    status.add_argument("--data-dir", type=Path)
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    deployment = load_existing(args.data_dir or default_data_dir())
    s = deployment.settings
    ok = True
    try:
        versions = request_json("GET", f"{s.homeserver_url}/_matrix/client/versions", timeout=5)
        request_json("GET", f"{s.homeserver_url}/health", timeout=5)
        print(f"homeserver  OK    {s.homeserver_url} (spec {versions['versions'][-1]}, {s.database})")
    except (HttpError, OSError, KeyError) as exc:
        ok = False
        print(f"homeserver  DOWN  {s.homeserver_url}: {exc}")
    try:
        health = request_json("GET", f"{s.appservice_url}/_carematrix/health", timeout=5)
        print(f"appservice  OK    {s.appservice_url} (bot {health['bot']}, policy {health['policy_digest'][:12]})")
        for line in health.get("policy_rejected_edit", []):
            print(f"  rejected policy edit: {line}")
        for item in health.get("undelivered", []):
            print(f"  UNDELIVERED {item['type']} {item['control_id']} from {item['source']}: {item['why']}")
    except (HttpError, OSError, KeyError) as exc:
        ok = False
        print(f"appservice  DOWN  {s.appservice_url}: {exc}")
    return EXIT_OK if ok else EXIT_FAILED
