"""``carematrix policy check``: validate a policy directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from carematrix.policy import PolicyInvalid, load_policy
from carematrix_ops.cli.common import EXIT_FAILED, EXIT_OK, policy_dir


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = sub.add_parser("policy", help="work with policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="validate the policy directory")
    check.add_argument("path", nargs="?", type=Path)
    check.set_defaults(func=cmd_policy_check)


def cmd_policy_check(args: argparse.Namespace) -> int:
    directory = policy_dir(args.path)
    try:
        policy = load_policy(directory)
    except PolicyInvalid as exc:
        for error in exc.errors:
            print(error)
        print(f"policy check failed: {len(exc.errors)} error(s) in {directory}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"OK: {directory}: {len(policy.units)} units, {len(policy.staff)} staff, "
        f"{len(policy.room_classes)} room classes; policy {policy.digest[:12]}"
    )
    return EXIT_OK
