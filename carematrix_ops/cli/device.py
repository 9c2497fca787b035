"""``carematrix device token <id>``: a fresh token for a nurse-call device, and the line that
puts its hash (never the token) into the policy's devices section."""

from __future__ import annotations

import argparse
import hashlib
import secrets

from carematrix.policy.devices import DEVICE_ID_RE
from carematrix_ops.cli.common import EXIT_OK, EXIT_USAGE


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    device = sub.add_parser("device", help="nurse-call devices (policy: devices)")
    commands = device.add_subparsers(dest="device_command", required=True)
    token = commands.add_parser("token", help="make a device token; prints it once and the policy line with its hash")
    token.add_argument("device_id")
    token.set_defaults(func=cmd_token)


def cmd_token(args: argparse.Namespace) -> int:
    if not DEVICE_ID_RE.match(args.device_id):
        print(f"'{args.device_id}' is not a device ID (letters, digits, '.', '_' or '-')")
        return EXIT_USAGE
    token = secrets.token_urlsafe(32)
    print(f"Token for {args.device_id} (configure it on the device; it is not kept anywhere):\n  {token}")
    print("Policy line (devices.devices." + args.device_id + "):")
    print(f"  token_sha256: {hashlib.sha256(token.encode()).hexdigest()}")
    return EXIT_OK
