"""What the operator asked for (:class:`Settings`), where each file of a data dir lives
(:class:`Paths`) and the two together with the secrets (:class:`Deployment`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from carematrix import identity
from carematrix_ops import resources

BOT_LOCALPART = "carematrix"
ADMIN_LOCALPART = "carematrix-admin"


@dataclass
class Settings:
    data_dir: Path
    port: int = 8008
    appservice_port: int = 0  # 0: port + 1
    server_name: str = "localhost"
    bind_address: str = "127.0.0.1"
    database: str = "sqlite"
    db_url: str | None = None
    # None: the checkout's policies/, or in an installed package the data dir's policies/
    # (resources.default_policy_dir); a Path once constructed.
    policy_dir: Path | None = None
    # Tests and benchmarks drive many messages per second from a handful of accounts.
    relaxed_rate_limits: bool = False
    # False renders a plain Synapse (no modules, no appservice): the benchmark baseline.
    carematrix_enabled: bool = True
    # Demo mode gives org-sync-created accounts the demo password.
    demo: bool = True
    # How often the audit chain's head is signed (a checkpoint detects truncation).
    audit_checkpoint_seconds: float = 60.0
    # False leaves the audit module out: only for measuring what the audit costs.
    audit_enabled: bool = True
    # "host:port" of a syslog collector (RFC 5424 over TCP) that receives every record.
    audit_syslog: str | None = None
    # How often the homeserver's retention purge jobs run (messages past their class's
    # lifetime are deleted then); tests shorten it.
    retention_purge_seconds: int = 3600
    # Lets tests move the appservice's on-call clock; never in production.
    test_clock: bool = False
    # MLLP (HL7 v2 over TCP) port the appservice listens on for the HIS; 0 switches it off.
    hl7_port: int = 2575
    hl7_bind: str = "127.0.0.1"
    # An HL7 message over this size gets AR naming the limit (the connection stays open); a
    # frame started and not finished within the timeout is dead-lettered and its connection
    # closed (docs/clinical.md). An idle connection between messages stays open.
    hl7_max_message_bytes: int = 1 << 20
    hl7_frame_timeout_seconds: float = 30.0
    # The hospital systems the appservice reads from and writes to (None: not connected):
    # the FHIR R4 server case summaries come from, the PACS's DICOMweb root, and the EMR
    # FHIR endpoint closed cases are archived to.
    fhir_server: str | None = None
    dicomweb: str | None = None
    emr_archive: str | None = None
    # Bearer token the appservice presents to the FHIR server and the EMR archive (from
    # $CAREMATRIX_SYSTEMS_TOKEN; never written to deployment.json).
    systems_token: str | None = None
    # Start the demo hospital's own systems (carematrix_ops.demo) and connect them: the demo EMR
    # (FHIR server with the demo patients, also receiving case archives) and, if Orthanc is
    # installed, the demo PACS with one CT. Only with demo, never next to real systems;
    # prepare() fills fhir_server/dicomweb/emr_archive with their URLs.
    demo_systems: bool = False
    demo_emr_port: int = 0  # 0: appservice port + 1
    demo_pacs_port: int = 0  # 0: appservice port + 2
    # Sign-in with the hospital directory: the keys of carematrix.ldap_login.parse_ldap_config
    # (docs/org.md); None leaves passwords to Synapse.
    ldap: dict | None = None
    # Sign-in with the hospital's single sign-on (OIDC): the keys of sign_in.OIDC_KEYS (docs/org.md);
    # None offers no SSO.
    oidc: dict | None = None
    # TURN for voice and video calls (coturn, run by `up` when installed; docs/mobile.md): UDP
    # and TCP port, the host name clients are told (None: the bind address, or the server
    # name when bound to every interface) and the UDP ports relays take. 0 switches it off.
    turn_port: int = 3478
    turn_host: str | None = None
    turn_min_port: int = 49160
    turn_max_port: int = 49400
    # The hospital's push gateway (Matrix Push Gateway API, e.g.
    # http://10.20.0.5:5000/_matrix/push/v1/notify): Synapse's outbound-address blocklist is
    # opened for its address alone, so phones' pushers can reach it (docs/mobile.md).
    push_gateway: str | None = None
    log_level: str = "INFO"
    # Synapse split into a main process and workers behind a reverse proxy (PostgreSQL only;
    # carematrix_ops/deploy/workers.py, docs/scale.md).
    workers: bool = False
    # "host:port" of the Redis the workers replicate over; None: a private redis-server of the
    # data dir on a UNIX socket, started by `carematrix up`.
    redis: str | None = None
    # Transcribe voice messages (docs/voice.md); the joined speech model lives in the data
    # dir's voice-models/ unless another directory is named (tests share one).
    voice: bool = True
    voice_model_cache: str | None = None
    # Set by `carematrix deploy` for the data dir of one machine of a layout over several
    # (carematrix_ops/deploy/hosts.py, docs/scale.md): the hosts file (its copy in the data
    # dir), this machine's name in it, the addresses the proxy and the appservice are reached
    # at, the URL clients use, and the media store every Synapse process shares.
    hosts_file: str | None = None
    host: str | None = None
    homeserver_host: str = "127.0.0.1"
    appservice_host: str = "127.0.0.1"
    public_baseurl: str | None = None
    media_store: str | None = None

    @property
    def policy_path(self) -> Path:
        """The policy directory, resolved when the settings were made."""
        assert self.policy_dir is not None
        return self.policy_dir

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.policy_dir is None:
            self.policy_dir = resources.default_policy_dir(self.data_dir)
        self.policy_dir = Path(self.policy_dir).resolve()
        if not self.appservice_port:
            self.appservice_port = self.port + 1
        if not self.demo_emr_port:
            self.demo_emr_port = self.appservice_port + 1
        if not self.demo_pacs_port:
            self.demo_pacs_port = self.appservice_port + 2

    @property
    def homeserver_url(self) -> str:
        return f"http://{_netloc(self.homeserver_host, self.port)}"

    @property
    def appservice_url(self) -> str:
        return f"http://{_netloc(self.appservice_host, self.appservice_port)}"

    @property
    def demo_emr_url(self) -> str:
        """The demo EMR's FHIR base."""
        return f"http://127.0.0.1:{self.demo_emr_port}/fhir"

    @property
    def demo_pacs_url(self) -> str:
        """The demo PACS's REST API; its DICOMweb root is below it."""
        return f"http://127.0.0.1:{self.demo_pacs_port}"

    @property
    def has_demo_pacs(self) -> bool:
        """Whether this deployment has a demo PACS: asked, and Orthanc is installed."""
        from carematrix_ops.demo import pacs

        return self.demo_systems and self.carematrix_enabled and pacs.installed()


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def media_store(settings: Settings, paths: Paths) -> Path:
    """Where uploads are kept: the data dir's, or the store every machine shares."""
    return Path(settings.media_store) if settings.media_store else paths.media


@dataclass
class Paths:
    root: Path
    synapse_dir: Path = field(init=False)
    appservice_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.synapse_dir = self.root / "synapse"
        self.appservice_dir = self.root / "appservice"

    secrets = property(lambda self: self.root / "secrets.json")
    deployment = property(lambda self: self.root / "deployment.json")
    homeserver_config = property(lambda self: self.synapse_dir / "homeserver.yaml")
    log_config = property(lambda self: self.synapse_dir / "log.yaml")
    signing_key = property(lambda self: self.synapse_dir / "signing.key")
    audit_signing_key = property(lambda self: self.synapse_dir / "audit_signing.key")
    audit_verify_key = property(lambda self: self.root / "audit_verify.key")
    audit_spool = property(lambda self: self.root / "audit-syslog-spool.db")
    sqlite_db = property(lambda self: self.synapse_dir / "homeserver.db")
    media = property(lambda self: self.synapse_dir / "media")
    synapse_log = property(lambda self: self.synapse_dir / "homeserver.log")
    registration = property(lambda self: self.appservice_dir / "registration.yaml")
    appservice_config = property(lambda self: self.appservice_dir / "config.yaml")
    appservice_db = property(lambda self: self.appservice_dir / "appservice.db")
    appservice_log = property(lambda self: self.appservice_dir / "appservice.log")
    logs = property(lambda self: self.root / "logs")
    watermark_cache = property(lambda self: self.root / "watermark-cache")
    case_archives = property(lambda self: self.root / "case-archives")
    voice_models = property(lambda self: self.root / "voice-models")
    demo_pacs = property(lambda self: self.root / "demo-pacs")
    demo_pacs_log = property(lambda self: self.logs / "demo-pacs.out")
    demo_emr_log = property(lambda self: self.logs / "demo-emr.out")
    turn_dir = property(lambda self: self.root / "turn")
    turn_log = property(lambda self: self.logs / "turn.out")


@dataclass
class Deployment:
    settings: Settings
    paths: Paths
    secrets: dict[str, str]

    @property
    def bot_user_id(self) -> str:
        return identity.user_id(BOT_LOCALPART, self.settings.server_name)

    @property
    def admin_user_id(self) -> str:
        return identity.user_id(ADMIN_LOCALPART, self.settings.server_name)
