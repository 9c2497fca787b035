"""``carematrix org``: bring Matrix in line with the policy, and import staff from HR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from carematrix.policy import PolicyInvalid, load_policy
from carematrix_ops.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, default_data_dir, policy_dir
from carematrix_ops.deploy.record import load_existing
from carematrix_ops.http import HttpError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    org = sub.add_parser("org", help="the organisation: sync into Matrix, import from HR")
    org_sub = org.add_subparsers(dest="org_command", required=True)
    sync = org_sub.add_parser("sync", help="bring accounts, spaces and rooms in line with the policy")
    sync.add_argument("--dry-run", action="store_true", help="print the changes without making them")
    sync.add_argument("--data-dir", type=Path)
    sync.set_defaults(func=cmd_org_sync)
    imp = org_sub.add_parser("import", help="turn an HR export (CSV) into the staff policy (YAML)")
    imp.add_argument("csv", type=Path)
    imp.add_argument("--map", action="append", metavar="FIELD=COLUMN", help="CSV column for a field (repeatable)")
    imp.add_argument("--out", type=Path, help="write the YAML here (default: standard output)")
    imp.add_argument("--encoding", default="utf-8-sig", help="CSV encoding (default utf-8-sig; e.g. gb18030)")
    imp.add_argument("--policy-dir", type=Path, help="policy whose units and roles rows must use")
    imp.set_defaults(func=cmd_org_import)


def cmd_org_sync(args: argparse.Namespace) -> int:
    from carematrix_ops.seed import Seeder

    deployment = load_existing(args.data_dir or default_data_dir())
    try:
        report = Seeder(deployment).org_sync(dry_run=args.dry_run)
    except (HttpError, OSError) as exc:
        print(f"error: cannot reach the CareMatrix appservice at {deployment.settings.appservice_url} "
              f"({exc}); is the stack running (make run)?", file=sys.stderr)
        return EXIT_FAILED
    header = "Dry run: these changes would be made" if args.dry_run else "Applied"
    print(f"{header} (policy {report['policy_digest'][:12]}):")
    for line in report["actions"] or ["(nothing to change)"]:
        print(f"  {line}")
    for line in report["errors"]:
        print(f"error: {line}", file=sys.stderr)
    return EXIT_FAILED if report["errors"] else EXIT_OK


def cmd_org_import(args: argparse.Namespace) -> int:
    from carematrix.org.importer import import_staff, parse_mapping

    directory = policy_dir(args.policy_dir)
    try:
        mapping = parse_mapping(args.map or [])
        text = args.csv.read_text(encoding=args.encoding)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: cannot read {args.csv}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        policy = load_policy(directory)
    except PolicyInvalid as exc:
        print(f"error: the policy in {directory} is invalid; fix it first:\n{exc}", file=sys.stderr)
        return EXIT_FAILED
    result = import_staff(str(args.csv), text, mapping, policy)
    if result.errors:
        for error in result.errors:
            print(error)
        print(f"org import failed: {len(result.errors)} error(s); nothing written", file=sys.stderr)
        return EXIT_FAILED
    if args.out is None:
        sys.stdout.write(result.yaml())
    else:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(result.yaml(), encoding="utf-8")
        tmp.replace(args.out)
        print(f"wrote {len(result.staff)} staff to {args.out}", file=sys.stderr)
    return EXIT_OK
