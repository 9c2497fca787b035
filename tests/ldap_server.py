"""A real OpenLDAP server (slapd) for tests of signing in with the hospital directory.

A fake would only answer what we already believe LDAP says; slapd is what many hospitals
run, with real bind semantics (unauthenticated binds, access control on userPassword,
size limits). Each instance is a private child process on a free loopback port with its own
configuration and database under the given directory (never the system's instance), and
stays in the foreground (``-d``) so ``stop()`` really ends it.

Needs the Debian packages ``slapd`` and ``ldap-utils`` (.ci/services installs them).
Optionally serves StartTLS and ldaps:// with a throwaway CA (``tls=True``).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ldap3 import Connection, Server
from ldap3.core.exceptions import LDAPException
from ldap3.utils.hashed import hashed

SLAPD = Path("/usr/sbin/slapd")
SCHEMA_DIR = Path("/etc/ldap/schema")
SCHEMAS = ("core", "cosine", "inetorgperson")
# Where distributions keep slapd's loadable backends; none of them: mdb is built in.
MODULE_DIRS = (Path("/usr/lib/ldap"), Path("/usr/lib64/openldap"), Path("/usr/lib/openldap"))
START_TIMEOUT = 20.0
BASE_DN = "dc=hospital,dc=test"
ADMIN_DN = f"cn=admin,{BASE_DN}"
PEOPLE_DN = f"ou=people,{BASE_DN}"


@dataclass
class LdapServer:
    uri: str
    base_dn: str
    admin_dn: str
    admin_password: str
    process: subprocess.Popen[bytes]
    workdir: Path
    people_dn: str = PEOPLE_DN
    # With tls=True: ldaps:// address and the CA certificate (PEM) that signed the server's.
    ldaps_uri: str | None = None
    ca_file: Path | None = None
    log: Path = field(default_factory=Path)

    def admin(self) -> Connection:
        conn = Connection(Server(self.uri), self.admin_dn, self.admin_password, raise_exceptions=True)
        conn.bind()
        return conn

    def add_person(
        self,
        staff_number: str,
        name: str,
        password: str,
        uid: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> str:
        """Add an inetOrgPerson under ou=people; returns its DN. A different ``uid`` with the
        same staff number makes the duplicate a broken directory can have."""
        uid = uid or staff_number.lower()
        dn = f"uid={uid},{self.people_dn}"
        attributes = {
            "cn": name,
            "sn": name.split()[-1],
            "uid": uid,
            "employeeNumber": staff_number,
            "userPassword": hashed("SALTED_SHA", password),
            **(extra or {}),
        }
        conn = self.admin()
        try:
            conn.add(dn, ["inetOrgPerson"], attributes)
        finally:
            conn.unbind()
        return dn

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return "(no slapd output)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_ldap(
    workdir: Path, tls: bool = False, cert_names: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> LdapServer:
    """Start a private slapd under ``workdir`` with an empty ``ou=people``; raises with its
    output if it does not accept the admin's bind within ``START_TIMEOUT`` seconds. A port
    taken between our choosing it and slapd binding it is retried with a fresh one.

    ``cert_names``: the names (IP addresses or DNS names) the TLS certificate is for."""
    if not SLAPD.exists():
        raise RuntimeError(f"OpenLDAP's slapd is needed ({SLAPD}): apt-get install slapd ldap-utils")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ca_file = _make_certificates(workdir, cert_names) if tls else None
    for attempt in range(3):
        server = _launch(workdir, ca_file)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and server.process.poll() is None:
            if _answers(server):
                _add_tree(server)
                return server
            time.sleep(0.1)
        exited = server.process.poll() is not None
        server.stop()
        if exited and attempt < 2 and "already in use" in server.log_tail():
            continue
        raise RuntimeError(f"slapd did not start on {server.uri}:\n{server.log_tail()}")
    raise AssertionError("unreachable")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _config(workdir: Path, ca_file: Path | None) -> str:
    lines = [f"include {SCHEMA_DIR / (name + '.schema')}" for name in SCHEMAS]
    lines += [f"pidfile {workdir / 'slapd.pid'}", f"argsfile {workdir / 'slapd.args'}"]
    module_dir = next((d for d in MODULE_DIRS if (d / "back_mdb.so").exists()), None)
    if module_dir is not None:
        lines += [f"modulepath {module_dir}", "moduleload back_mdb"]
    if ca_file is not None:
        lines += [
            f"TLSCACertificateFile {ca_file}",
            f"TLSCertificateFile {workdir / 'server.pem'}",
            f"TLSCertificateKeyFile {workdir / 'server.key'}",
        ]
    lines += [
        "database mdb",
        "maxsize 33554432",
        f'suffix "{BASE_DN}"',
        f'rootdn "{ADMIN_DN}"',
        "rootpw admin-secret",
        f"directory {workdir / 'db'}",
        "index employeeNumber eq",
        # As a real directory: passwords can be used to bind, never read.
        "access to attrs=userPassword by self write by anonymous auth by * none",
        "access to * by * read",
    ]
    return "\n".join(lines) + "\n"


def _launch(workdir: Path, ca_file: Path | None) -> LdapServer:
    port, tls_port = _free_ports(2)
    (workdir / "db").mkdir(exist_ok=True)
    conf = workdir / "slapd.conf"
    conf.write_text(_config(workdir, ca_file), "utf-8")
    uri = f"ldap://127.0.0.1:{port}"
    listen = [f"{uri}/"]
    ldaps_uri = None
    if ca_file is not None:
        ldaps_uri = f"ldaps://127.0.0.1:{tls_port}"
        listen.append(f"{ldaps_uri}/")
    log_path = workdir / "slapd.log"
    with log_path.open("ab") as log:
        # -d: stay in the foreground (no fork), so this Popen is slapd itself; "stats" logs
        # connections and operations (never passwords) and start-up errors.
        process = subprocess.Popen(
            [str(SLAPD), "-h", " ".join(listen), "-f", str(conf), "-d", "stats"],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    return LdapServer(uri, BASE_DN, ADMIN_DN, "admin-secret", process, workdir,
                      ldaps_uri=ldaps_uri, ca_file=ca_file, log=log_path)


def _answers(server: LdapServer) -> bool:
    try:
        conn = Connection(Server(server.uri, connect_timeout=1), server.admin_dn, server.admin_password,
                          receive_timeout=2)
        ok = conn.bind()
        conn.unbind()
        return bool(ok)
    except LDAPException:
        return False


def _add_tree(server: LdapServer) -> None:
    conn = server.admin()
    try:
        conn.add(server.base_dn, ["dcObject", "organization"], {"dc": "hospital", "o": "Test Hospital"})
        conn.add(server.people_dn, ["organizationalUnit"], {"ou": "people"})
    finally:
        conn.unbind()


def _make_certificates(workdir: Path, names: tuple[str, ...]) -> Path:
    """A throwaway CA and a server certificate for ``names``, signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))

    def alt_name(text: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(text))
        except ValueError:
            return x509.DNSName(text)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("CareMatrix test CA")).issuer_name(name("CareMatrix test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(validity[0]).not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name(names[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(validity[0]).not_valid_after(validity[1])
        .add_extension(
            x509.SubjectAlternativeName([alt_name(n) for n in names]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file = workdir / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    (workdir / "server.pem").write_bytes(cert.public_bytes(pem))
    (workdir / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (workdir / "server.key").chmod(0o600)
    return ca_file
