"""The ``carematrix`` command: run the stack, check policies, report health.

The parser and :func:`main` live here; each command (or group of commands) has its module,
which adds its parser and runs it: :mod:`.up`, :mod:`.policy`, :mod:`.org`, :mod:`.audit`,
:mod:`.watermark`, :mod:`.retention`, :mod:`.status`, :mod:`.deploy`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from carematrix.hsdb.migrations import SchemaVersionError
from carematrix_ops.cli import audit, deploy, device, org, policy, retention, status, up, watermark
from carematrix_ops.cli.common import EXIT_FAILED, EXIT_USAGE
from carematrix_ops.deploy.errors import DeployError

# In the order `carematrix --help` lists them.
COMMANDS = (up, deploy, policy, org, audit, watermark, retention, status, device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carematrix", description="CareMatrix clinical messaging")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SchemaVersionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
