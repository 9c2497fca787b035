"""What ``carematrix up`` prints once the stack is ready: where to connect and how to sign in."""

from __future__ import annotations

from carematrix.policy import Policy, load_policy
from carematrix.policy.org import Staff
from carematrix_ops.deploy.settings import Deployment, Settings


def print_banner(deployment: Deployment, result: object) -> None:
    from carematrix_ops.seed import SeedResult

    s = deployment.settings
    url = f"http://localhost:{s.port}" if s.bind_address in ("127.0.0.1", "0.0.0.0") else f"http://{s.bind_address}:{s.port}"
    lines = [
        "",
        "CareMatrix is ready.",
        f"  Homeserver URL : {url}",
        f"  Server name    : {s.server_name}",
        f"  Data dir       : {s.data_dir}",
        f"  Policy         : {s.policy_dir} (edit its YAML files; changes apply within a second or two)",
        f"  Bot            : {deployment.bot_user_id} (DM it '!ping', '!oncall')",
    ]
    if s.carematrix_enabled and s.audit_enabled:
        lines.append(f"  Console        : {url}/_carematrix/console (sign in with a staff login; "
                     f"system page: {deployment.admin_user_id}, admin_password in {deployment.paths.secrets})")
    if s.hl7_port:
        lines.append(f"  HL7 v2 (MLLP)  : {s.hl7_bind}:{s.hl7_port} (senders: see clinical.yaml in the policy)")
    if s.carematrix_enabled:
        lines.append(f"  FHIR R4 input  : {s.appservice_url}/_carematrix/fhir (bearer tokens: fhir_token:<source> in {deployment.paths.secrets})")
        systems = [f"{name} {url}" for name, url in (("FHIR server", s.fhir_server), ("PACS", s.dicomweb), ("EMR archive", s.emr_archive)) if url]
        lines.append("  Case rooms     : '!case open <patient id>'; " + ("; ".join(systems) if systems else "no FHIR server/PACS/EMR connected (--fhir-server, --dicomweb, --emr-archive)"))
        if s.demo_systems:
            lines += _demo_systems_lines(s)
        lines.append(_calls_line(s))
        lines.append("  Try a call     : as n3001, DM the bot '!call icu/doctor' (rings whoever is on duty), "
                     "then press the call button in the room it opens")
        lines += _device_lines(deployment)
    directory_only = s.ldap is not None and not s.ldap.get("local_passwords", False)
    if s.ldap is not None:
        lines.append(f"  Sign-in        : hospital directory password ({s.ldap.get('uri')})"
                     + ("" if directory_only else "; Synapse passwords also accepted"))
    if s.oidc is not None:
        lines.append(f"  Sign-in        : hospital SSO ({s.oidc.get('idp_name', 'Hospital sign-in')}, "
                     f"{s.oidc.get('issuer')})")
    if isinstance(result, SeedResult) and s.demo:
        policy = load_policy(s.policy_path)
        if directory_only:
            lines.append("  Staff logins (each with their own directory password):")
        else:
            lines.append(f"  Demo logins (password for all: {deployment.secrets['demo_password']}):")
        for staff in policy.staff:
            roles = f" [{', '.join(sorted(staff.roles))}]" if staff.roles else ""
            lines.append(f"    {staff.localpart:<8} {policy.display_name(staff)}{roles}{_console_pages(staff)}")
        lines.append(f"  Announcements  : #announcements:{s.server_name}")
        if s.voice and s.carematrix_enabled:
            lines.append(_voice_line(policy, s.server_name))
    lines += [
        "  Connect Element: Sign in -> Edit homeserver -> " + url + ", then a demo login above.",
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


def _console_pages(staff: Staff) -> str:
    """Which console pages this login opens (carematrix.console.access decides the same)."""
    from carematrix.console.access import visible_pages

    return "; console: " + ", ".join(p.key for p in visible_pages(staff, is_admin=False))


def _demo_systems_lines(settings: Settings) -> list[str]:
    """What the demo EMR and PACS hold, and the first thing to try with them."""
    from carematrix_ops.demo import DEMO_ACCESSION, DEMO_PATIENT, demo_patients
    from carematrix_ops.demo.pacs import INSTALL_HINT

    room = f"#cardiology-team:{settings.server_name}"
    lines = [f"  Demo EMR       : patients {', '.join(demo_patients())}; files closed cases"]
    if settings.has_demo_pacs:
        lines.append(f"  Demo PACS      : CT of {DEMO_PATIENT}, accession {DEMO_ACCESSION} (Orthanc)")
        then = f", then in the case room: !images {DEMO_ACCESSION}"
    else:
        lines.append(f"  Demo PACS      : not installed ({INSTALL_HINT})")
        then = ""
    lines.append(f"  Try            : as d1001 in {room}: !case open {DEMO_PATIENT}{then}")
    return lines


def _calls_line(settings: Settings) -> str:
    """Where Element's calls relay (coturn), or why they do not."""
    from carematrix_ops.deploy import turn

    if turn.enabled(settings):
        return f"  Calls (TURN)   : {turn.turn_uris(settings)[0]} (coturn); the call button in any two-person chat"
    if not settings.turn_port:
        return "  Calls (TURN)   : off (--turn-port 0); calls work only where phones reach each other"
    return f"  Calls (TURN)   : coturn not installed ({turn.INSTALL_HINT}); calls work only where phones reach each other"


def _device_lines(deployment: Deployment) -> list[str]:
    """How to press the first nurse-call device the policy declares (a generated token is in
    the data dir's secrets; a hashed one only the device knows)."""
    from carematrix_ops.deploy.secrets import DEVICE_TOKEN_PREFIX

    s = deployment.settings
    try:
        devices = load_policy(s.policy_path).devices
    except Exception:  # noqa: BLE001 - the banner never stops a start; up checked the policy
        return []
    if devices is None or not devices.devices:
        return []
    device = next((d for d in devices.devices.values() if DEVICE_TOKEN_PREFIX + d.id in deployment.secrets), None)
    if device is None:
        return [f"  Nurse call     : POST {s.appservice_url}/_carematrix/devices/<id>/call (docs/mobile.md)"]
    token = deployment.secrets[DEVICE_TOKEN_PREFIX + device.id]
    return [
        f"  Nurse call     : {device.label}, press with:",
        f"    curl -X POST -H 'Authorization: Bearer {token}' -d '{{\"kind\": \"assist\"}}' "
        f"{s.appservice_url}/_carematrix/devices/{device.id}/call",
    ]


def _voice_line(policy: Policy, server_name: str) -> str:
    """Push-to-talk, to try from Element's microphone button: a role to send a voice message to."""
    roles = policy.oncall.roles if policy.oncall else {}
    role = roles.get("cardiology/attending") or next(iter(roles.values()), None)
    if role is None:
        return "  Voice messages : send one in any room with the bot; its transcript follows as a reply"
    return (
        f"  Voice messages : record one (Element's microphone) to #{role.localpart}:{server_name} "
        f"({role.name}): it pages whoever is on duty, and the transcript follows"
    )
