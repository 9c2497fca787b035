"""``carematrix retention report``: what the purge jobs will delete, per room."""

from __future__ import annotations

import argparse
from pathlib import Path

from carematrix_ops.cli.common import EXIT_OK, default_data_dir
from carematrix_ops.cli.our_tables import homeserver_db_target
from carematrix_ops.deploy.record import load_existing


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    retention = sub.add_parser("retention", help="message lifetimes per room class")
    retention_sub = retention.add_subparsers(dest="retention_command", required=True)
    report = retention_sub.add_parser("report", help="what the purge jobs will delete, per room")
    report.add_argument("--days", type=int, default=7, help="also count what expires within this many days")
    report.add_argument("--data-dir", type=Path)
    report.set_defaults(func=cmd_retention_report)


def cmd_retention_report(args: argparse.Namespace) -> int:
    import time

    from carematrix_ops.audit_db import connect
    from synapse_modules.retention import render, retention_report

    deployment = load_existing(args.data_dir or default_data_dir())
    now = int(time.time() * 1000)
    with connect(homeserver_db_target(deployment)) as db, db.transaction(read_only=True) as txn:
        rows = retention_report(txn, db.dialect, now, args.days * 86_400_000)
    print(render(rows, args.days))
    return EXIT_OK
