"""``carematrix deploy``: a worker deployment over several machines, from a hosts file
(carematrix_ops/deploy/hosts.py, multihost.py; docs/scale.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from carematrix_ops.cli.common import EXIT_FAILED, EXIT_OK, default_data_dir
from carematrix_ops.http import HttpError, request_json

SEED_WAIT_SECONDS = 600.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deploy = sub.add_parser("deploy", help="a worker deployment over several machines, from a hosts file")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)
    render = deploy_sub.add_parser(
        "render", help="write each machine's configs and systemd units (run where PostgreSQL and the shared policy are reached)",
    )
    render.add_argument("hosts", type=Path, help="the hosts file (YAML): which processes run on which machine")
    render.add_argument("--out", type=Path, required=True,
                        help="directory for one tree per machine (copy OUT/NAME/ to that machine's /) and the kept secrets")
    render.set_defaults(func=cmd_render)
    seed = deploy_sub.add_parser(
        "seed", help="once the machines run: the admin account, the bot, org sync (the seed unit runs it)",
    )
    seed.add_argument("--data-dir", type=Path)
    seed.add_argument("--wait", type=float, default=SEED_WAIT_SECONDS, metavar="SECONDS",
                      help=f"how long to wait for the homeserver and the appservice (default {SEED_WAIT_SECONDS:.0f})")
    seed.set_defaults(func=cmd_seed)


def cmd_render(args: argparse.Namespace) -> int:
    from carematrix_ops.deploy.multihost import render, summary

    print(summary(render(args.hosts, args.out)))
    return EXIT_OK


def cmd_seed(args: argparse.Namespace) -> int:
    """What `carematrix up` does after starting the processes, for a layout whose processes
    systemd starts on several machines: waits until the homeserver (through the proxy) and
    the appservice answer, then brings the homeserver in line with the policy."""
    from carematrix_ops.deploy.record import load_existing
    from carematrix_ops.seed import Seeder, SeedFailed

    deployment = load_existing(args.data_dir or default_data_dir())
    s = deployment.settings
    deadline = time.monotonic() + args.wait
    waiting = [f"{s.homeserver_url}/_matrix/client/versions", f"{s.appservice_url}/_carematrix/health"]
    while waiting:
        try:
            request_json("GET", waiting[0], timeout=5)
            waiting.pop(0)
            continue
        except (HttpError, OSError) as exc:
            if time.monotonic() > deadline:
                print(f"error: {waiting[0]} did not answer within {args.wait:.0f}s ({exc}); are the machines' "
                      "carematrix.target units running?", file=sys.stderr)
                return EXIT_FAILED
        time.sleep(1)
    try:
        result = Seeder(deployment).run()
    except (SeedFailed, HttpError, OSError) as exc:
        print(f"error: seeding the homeserver failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"CareMatrix is ready at {s.public_baseurl or s.homeserver_url}: {len(result.created_users)} accounts "
          f"created; announcements in {result.announcement_room_id}")
    return EXIT_OK
