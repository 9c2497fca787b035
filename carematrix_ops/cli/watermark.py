"""``carematrix watermark trace``: name the viewer a leaked image was rendered for."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from carematrix import identity
from carematrix_ops.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, default_data_dir
from carematrix_ops.cli.our_tables import our_tables
from carematrix_ops.deploy.record import load_existing


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watermark = sub.add_parser("watermark", help="per-viewer image watermarks")
    watermark_sub = watermark.add_subparsers(dest="watermark_command", required=True)
    trace = watermark_sub.add_parser("trace", help="name the viewer a leaked image was rendered for")
    trace.add_argument("file", type=Path, help="the leaked image (photo, screenshot or re-encoded copy)")
    trace.add_argument("--data-dir", type=Path)
    trace.set_defaults(func=cmd_watermark_trace)


def cmd_watermark_trace(args: argparse.Namespace) -> int:
    from carematrix.policy import load_policy
    from carematrix_ops.deploy.settings import media_store
    from carematrix_ops.tracing import trace_leak

    deployment = load_existing(args.data_dir or default_data_dir())
    try:
        leaked = args.file.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    media_root = media_store(deployment.settings, deployment.paths) / "local_content"

    def read_original(media_id: str) -> bytes | None:
        try:
            return (media_root / media_id[:2] / media_id[2:4] / media_id[4:]).read_bytes()
        except OSError:
            return None

    policy = load_policy(deployment.settings.policy_path)

    def name_of(user_id: str) -> str:
        staff = policy.staff_for_localpart(identity.localpart(user_id))
        return f"{staff.name} ({staff.staff_number})" if staff else user_id

    key = deployment.secrets["watermark_key"].encode()
    with our_tables(deployment) as (txn, dialect):
        report = trace_leak(leaked, txn, dialect, read_original, key)
    print(report.summary(deployment.settings.server_name, name_of))
    return EXIT_OK if report.delivery is not None else EXIT_FAILED
