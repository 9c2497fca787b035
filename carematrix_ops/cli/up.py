"""``carematrix up``: set up the data dir on the first run, then run the whole stack."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from carematrix_ops.cli.banner import print_banner
from carematrix_ops.cli.common import EXIT_FAILED, EXIT_OK
from carematrix_ops.cli.up_settings import byte_count, port_number, seconds, up_settings
from carematrix_ops.deploy.checks import check_ports
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.workers import TOPOLOGY
from carematrix_ops.http import HttpError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="set up (first run) and run the whole stack")
    up.add_argument("--data-dir", type=Path, help="data dir (default $CAREMATRIX_DATA_DIR, or var/ in a checkout)")
    up.add_argument("--port", type=port_number, help="homeserver port (default $CAREMATRIX_PORT or 8008)")
    up.add_argument("--appservice-port", type=port_number, help="appservice port (default homeserver port + 1)")
    up.add_argument("--hl7-port", type=int, help="MLLP port for HL7 v2 from the HIS (default 2575; 0: off)")
    up.add_argument("--hl7-max-message-bytes", type=byte_count, metavar="N",
                    help="larger HL7 messages get AR naming the limit (default $CAREMATRIX_HL7_MAX_MESSAGE_BYTES or 1048576)")
    up.add_argument("--hl7-frame-timeout", type=seconds, metavar="SECONDS",
                    help="an MLLP frame started and not finished this long closes its connection "
                         "(default $CAREMATRIX_HL7_FRAME_TIMEOUT or 30)")
    up.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    up.add_argument("--db-url", help="PostgreSQL URL, e.g. postgresql://synapse@127.0.0.1:5432/carematrix")
    up.add_argument("--server-name", default=os.environ.get("CAREMATRIX_SERVER_NAME", "localhost"))
    up.add_argument("--bind", default="127.0.0.1", help="address the homeserver listens on")
    up.add_argument("--policy-dir", type=Path, help="policies directory (default $CAREMATRIX_POLICY_DIR, else the checkout's policies/, "
                    "else DATA_DIR/policies, a copy of the demo policy made on the first start)")
    up.add_argument("--audit-syslog", metavar="HOST:PORT", help="forward every audit record to this syslog collector (TCP)")
    up.add_argument("--fhir-server", metavar="URL", help="the hospital's FHIR R4 server (patient summaries in case rooms)")
    up.add_argument("--dicomweb", metavar="URL", help="the PACS's DICOMweb root (key images in case rooms)")
    up.add_argument("--emr-archive", metavar="URL", help="FHIR endpoint closed cases are archived to (Bundle + PDF)")
    up.add_argument("--no-demo", action="store_true", help="accounts get no password (sign-in via SSO); no demo logins printed")
    up.add_argument("--no-demo-systems", action="store_true",
                    help="demo mode without the demo EMR and PACS (implied by --no-demo and by "
                         "--fhir-server/--dicomweb/--emr-archive)")
    up.add_argument("--demo-emr-port", type=port_number, help="port of the demo EMR (default appservice port + 1)")
    up.add_argument("--demo-pacs-port", type=port_number, help="port of the demo PACS (default appservice port + 2)")
    up.add_argument("--turn-port", type=int, metavar="PORT",
                    help="TURN port for voice/video calls, UDP and TCP (default $CAREMATRIX_TURN_PORT or 3478; "
                         "0: no TURN server); runs coturn when installed")
    up.add_argument("--turn-host", metavar="HOST",
                    help="host name or address phones reach the TURN server at (default: --bind, or the server name)")
    up.add_argument("--push-gateway", metavar="URL",
                    help="the hospital's push gateway (Matrix Push Gateway API) phones register with "
                         "(default $CAREMATRIX_PUSH_GATEWAY; docs/mobile.md)")
    up.add_argument("--ldap-config", type=Path, metavar="FILE",
                    help="staff sign in with the hospital directory (LDAP): YAML settings, see docs/org.md "
                         "(bind password may come from $CAREMATRIX_LDAP_BIND_PASSWORD)")
    up.add_argument("--oidc-config", type=Path, metavar="FILE",
                    help="staff sign in with the hospital's single sign-on (OIDC): YAML settings, see "
                         "docs/org.md (client secret may come from $CAREMATRIX_OIDC_CLIENT_SECRET)")
    up.add_argument("--workers", action="store_true",
                    help="run Synapse as a main process and workers behind a reverse proxy (needs --database postgres, "
                         "nginx and Redis; see docs/scale.md)")
    up.add_argument("--redis", metavar="HOST:PORT",
                    help="with --workers: the Redis the workers replicate over (default $CAREMATRIX_REDIS, else a private "
                         "redis-server of the data dir on a UNIX socket)")
    up.set_defaults(func=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    from carematrix_ops.seed import Seeder, SeedFailed
    from carematrix_ops.supervisor import Stack, StartupFailed

    settings = up_settings(args)
    # Checked before anything is written, so a failed start leaves the data dir as it was.
    check_ports(settings)
    deployment = prepare(settings)
    stack = Stack(deployment)
    layout = f"{settings.database}, {1 + len(TOPOLOGY)} Synapse processes" if settings.workers else settings.database
    print(f"Starting CareMatrix from {settings.data_dir} ({layout}) ...", flush=True)
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stack.start()
        result = Seeder(deployment).run()
    except (StartupFailed, SeedFailed) as exc:
        stack.stop()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (HttpError, OSError) as exc:
        stack.stop()
        print(f"error: setting up the demo hospital failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print_banner(deployment, result)
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
