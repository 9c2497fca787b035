"""The ``carematrix`` command: run the stack, check policies, report health."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from carematrix.deploy import (
    DEFAULT_POLICY_DIR,
    REPO_ROOT,
    DeployError,
    Settings,
    check_ports,
    load_existing,
    prepare,
)
from carematrix.http import HttpError, request_json
from carematrix.policy import PolicyInvalid, load_policy

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _default_data_dir() -> Path:
    return Path(os.environ.get("CAREMATRIX_DATA_DIR") or REPO_ROOT / "var")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DeployError(f"{name}={raw!r} is not a port number") from None


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not between 1 and 65535")
    return port


def cmd_up(args: argparse.Namespace) -> int:
    from carematrix.seed import Seeder
    from carematrix.supervisor import Stack, StartupFailed

    port = args.port or _env_int("CAREMATRIX_PORT", 8008)
    settings = Settings(
        data_dir=args.data_dir or _default_data_dir(),
        port=port,
        appservice_port=args.appservice_port or _env_int("CAREMATRIX_APPSERVICE_PORT", 0),
        server_name=args.server_name,
        bind_address=args.bind,
        database=args.database,
        db_url=args.db_url,
        policy_dir=args.policy_dir or Path(os.environ.get("CAREMATRIX_POLICY_DIR") or DEFAULT_POLICY_DIR),
    )
    # Checked before anything is written, so a failed start leaves the data dir as it was.
    check_ports(settings)
    deployment = prepare(settings)
    stack = Stack(deployment)
    print(f"Starting CareMatrix from {settings.data_dir} ({settings.database}) ...", flush=True)
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stack.start()
        result = Seeder(deployment).run() if not args.no_demo else None
    except StartupFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (HttpError, OSError) as exc:
        stack.stop()
        print(f"error: setting up the demo hospital failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _print_banner(deployment, result)
    try:
        stack.supervise(lambda: stopping)
    except StartupFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        stack.stop()
        return EXIT_FAILED
    print("Stopping CareMatrix ...", flush=True)
    stack.stop()
    print("CareMatrix stopped.", flush=True)
    return EXIT_OK


def _print_banner(deployment: object, result: object) -> None:
    from carematrix.deploy import Deployment
    from carematrix.seed import SeedResult, display_name

    assert isinstance(deployment, Deployment)
    s = deployment.settings
    url = f"http://localhost:{s.port}" if s.bind_address in ("127.0.0.1", "0.0.0.0") else f"http://{s.bind_address}:{s.port}"
    lines = [
        "",
        "CareMatrix is ready.",
        f"  Homeserver URL : {url}",
        f"  Server name    : {s.server_name}",
        f"  Data dir       : {s.data_dir}",
        f"  Bot            : {deployment.bot_user_id} (DM it '!ping')",
    ]
    if isinstance(result, SeedResult):
        policy = load_policy(s.policy_dir)
        lines.append(f"  Demo logins (password for all: {deployment.secrets['demo_password']}):")
        for staff in policy.staff:
            roles = f" [{', '.join(sorted(staff.roles))}]" if staff.roles else ""
            lines.append(f"    {staff.localpart:<8} {display_name(staff, policy)}{roles}")
        lines.append(f"  Announcements  : #announcements:{s.server_name}")
    lines += [
        "  Connect Element: Sign in -> Edit homeserver -> " + url + ", then a demo login above.",
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


def cmd_policy_check(args: argparse.Namespace) -> int:
    directory = args.path or Path(os.environ.get("CAREMATRIX_POLICY_DIR") or DEFAULT_POLICY_DIR)
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


def cmd_status(args: argparse.Namespace) -> int:
    deployment = load_existing(args.data_dir or _default_data_dir())
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
    except (HttpError, OSError, KeyError) as exc:
        ok = False
        print(f"appservice  DOWN  {s.appservice_url}: {exc}")
    return EXIT_OK if ok else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carematrix", description="CareMatrix clinical messaging")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="set up (first run) and run the whole stack")
    up.add_argument("--data-dir", type=Path, help="data dir (default $CAREMATRIX_DATA_DIR or ./var)")
    up.add_argument("--port", type=_port, help="homeserver port (default $CAREMATRIX_PORT or 8008)")
    up.add_argument("--appservice-port", type=_port, help="appservice port (default homeserver port + 1)")
    up.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    up.add_argument("--db-url", help="PostgreSQL URL, e.g. postgresql://synapse@127.0.0.1:5432/carematrix")
    up.add_argument("--server-name", default=os.environ.get("CAREMATRIX_SERVER_NAME", "localhost"))
    up.add_argument("--bind", default="127.0.0.1", help="address the homeserver listens on")
    up.add_argument("--policy-dir", type=Path, help="policies directory (default ./policies)")
    up.add_argument("--no-demo", action="store_true", help="do not create the demo accounts and rooms")
    up.set_defaults(func=cmd_up)

    policy = sub.add_parser("policy", help="work with policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="validate the policy directory")
    check.add_argument("path", nargs="?", type=Path)
    check.set_defaults(func=cmd_policy_check)

    status = sub.add_parser("status", help="health of a running stack")
    status.add_argument("--data-dir", type=Path)
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
