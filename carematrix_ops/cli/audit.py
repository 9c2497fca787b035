"""``carematrix audit``: verify the tamper-evident trail, and search it as an auditor."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from carematrix_ops.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, default_data_dir
from carematrix_ops.cli.our_tables import our_tables
from carematrix_ops.deploy.record import load_existing
from carematrix_ops.deploy.settings import Deployment
from carematrix_ops.http import HttpError, request_json


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="the tamper-evident audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain and signed checkpoints")
    verify.add_argument("--data-dir", type=Path)
    verify.add_argument("--verify-keys", type=Path, help="trusted verify keys (default: the deployment's)")
    verify.set_defaults(func=cmd_audit_verify)
    search = audit_sub.add_parser("search", help="search the trail (auditors only; the search is audited)")
    search.add_argument("--data-dir", type=Path)
    search.add_argument("--login", help="auditor's user name (password from CAREMATRIX_PASSWORD or a prompt)")
    search.add_argument("--token", help="auditor's access token (or CAREMATRIX_TOKEN)")
    for name in ("actor", "room", "patient", "action", "outcome", "since", "until"):
        search.add_argument(f"--{name}")
    search.add_argument("--limit", type=int, default=100)
    search.add_argument("--format", choices=["table", "json", "csv", "fhir"], default="table")
    search.set_defaults(func=cmd_audit_search)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from carematrix.audit.checkpoint import load_verify_keys
    from carematrix.audit.verify import verify

    deployment = load_existing(args.data_dir or default_data_dir())
    key_file = args.verify_keys or deployment.paths.audit_verify_key
    try:
        keys = load_verify_keys(key_file)
    except OSError as exc:
        print(f"error: cannot read the audit verify key {key_file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    with our_tables(deployment) as (txn, dialect):
        result = verify(txn, dialect, keys)
    print(result.summary())
    return EXIT_OK if result.ok else EXIT_FAILED


class NoPassword(Exception):
    """Neither CAREMATRIX_PASSWORD, a terminal to ask on, nor a line on standard input."""


def _password(localpart: str) -> str:
    """The auditor's password: from the environment, the terminal, or one line piped in.

    A script or a job runner has no terminal; getpass would then read standard input with a
    warning and fail with a traceback on an empty one, so a pipe is read plainly here.
    """
    import getpass

    if password := os.environ.get("CAREMATRIX_PASSWORD"):
        return password
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {localpart}: ")
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise NoPassword(f"no password for {localpart}: set CAREMATRIX_PASSWORD, pipe it on standard "
                         "input, run from a terminal to be asked, or pass --token")
    return password


def _login_token(deployment: Deployment, localpart: str) -> str:
    password = _password(localpart)
    resp = request_json(
        "POST",
        f"{deployment.settings.homeserver_url}/_matrix/client/v3/login",
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}, "password": password},
    )
    return resp["access_token"]


def cmd_audit_search(args: argparse.Namespace) -> int:
    import urllib.request
    from urllib.parse import urlencode

    deployment = load_existing(args.data_dir or default_data_dir())
    token = args.token or os.environ.get("CAREMATRIX_TOKEN")
    try:
        if not token:
            if not args.login:
                print("error: searching the audit trail needs an auditor's login: --login USER "
                      "(password from CAREMATRIX_PASSWORD or a prompt) or --token", file=sys.stderr)
                return EXIT_USAGE
            try:
                token = _login_token(deployment, args.login)
            except NoPassword as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_USAGE
        filters = {k: v for k in ("actor", "room", "patient", "action", "outcome", "since", "until")
                   if (v := getattr(args, k)) is not None}
        filters["limit"] = str(args.limit)
        filters["format"] = args.format
        url = f"{deployment.settings.homeserver_url}/_synapse/client/carematrix/audit/search?{urlencode(filters)}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                sys.stdout.write(resp.read().decode())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            try:
                message = json.loads(body).get("error", body)
            except ValueError:
                message = body
            print(f"error: {message}", file=sys.stderr)
            return EXIT_FAILED
    except (HttpError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
