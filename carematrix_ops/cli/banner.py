"""What ``carematrix up`` prints once the stack is ready: where to connect and how to sign in."""

from __future__ import annotations

from carematrix.policy import load_policy
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
    if s.hl7_port:
        lines.append(f"  HL7 v2 (MLLP)  : {s.hl7_bind}:{s.hl7_port} (senders: see clinical.yaml in the policy)")
    if s.carematrix_enabled:
        lines.append(f"  FHIR R4 input  : {s.appservice_url}/_carematrix/fhir (bearer tokens: fhir_token:<source> in {deployment.paths.secrets})")
        systems = [f"{name} {url}" for name, url in (("FHIR server", s.fhir_server), ("PACS", s.dicomweb), ("EMR archive", s.emr_archive)) if url]
        lines.append("  Case rooms     : '!case open <patient id>'; " + ("; ".join(systems) if systems else "no FHIR server/PACS/EMR connected (--fhir-server, --dicomweb, --emr-archive)"))
        if s.demo_systems:
            lines += _demo_systems_lines(s)
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
            lines.append(f"    {staff.localpart:<8} {policy.display_name(staff)}{roles}")
        lines.append(f"  Announcements  : #announcements:{s.server_name}")
    lines += [
        "  Connect Element: Sign in -> Edit homeserver -> " + url + ", then a demo login above.",
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


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
