"""systemd service units for one machine of a layout over several (``carematrix deploy``).

On one machine ``carematrix up`` supervises every process itself. Across machines each runs
its share under systemd: one unit per process, all of them parts of ``carematrix.target``,
restarted 5 s after they exit (giving up, as ``up`` does, after five crashes in five minutes).
Units order the processes of one machine (Redis, the main process, the workers, the proxy,
the appservice); across machines the workers and the proxy simply retry until the main
process answers (docs/scale.md gives the order to start machines in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

TARGET = "carematrix.target"
UNIT_DIR = Path("/etc/systemd/system")
# systemd's command-line syntax: a word with any of these is quoted.
_NEEDS_QUOTES = re.compile(r"[\s\"'\\;]")


@dataclass
class Unit:
    name: str  # without .service
    description: str
    argv: list[str]
    cwd: Path
    after: list[str] = field(default_factory=list)  # units of this machine started first
    env: dict[str, str] = field(default_factory=dict)
    oneshot: bool = False
    reload_signal: str | None = None  # e.g. HUP: `systemctl reload` sends it
    low_port: bool = False  # listens below 1024: may bind it without being root

    @property
    def file_name(self) -> str:
        return f"{self.name}.service"


def exec_word(word: str) -> str:
    """One word of ExecStart=: ``%`` and ``$`` escaped (systemd would expand them), quoted
    when it holds spaces, quotes, backslashes or a semicolon."""
    word = word.replace("%", "%%").replace("$", "$$")
    if _NEEDS_QUOTES.search(word) or not word:
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render_unit(unit: Unit, user: str) -> str:
    after = " ".join(["network-online.target", *(f"{a}.service" for a in unit.after)])
    lines = [
        "# Rendered by `carematrix deploy render`; edits are overwritten by the next render.",
        "[Unit]",
        f"Description=CareMatrix {unit.description}",
        "Wants=network-online.target",
        f"After={after}",
        f"PartOf={TARGET}",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        f"Type={'oneshot' if unit.oneshot else 'simple'}",
    ]
    if unit.oneshot:
        lines.append("RemainAfterExit=yes")
    lines += [
        f"User={user}",
        f"WorkingDirectory={unit.cwd}",
        "Environment=PYTHONUNBUFFERED=1",
        *(f"Environment={k}={v}" for k, v in sorted(unit.env.items())),
        f"ExecStart={' '.join(exec_word(w) for w in unit.argv)}",
    ]
    if unit.reload_signal:
        lines.append(f"ExecReload=/bin/kill -{unit.reload_signal} $MAINPID")
    lines += [
        "Restart=on-failure",
        # A worker that starts before the main process has brought the schema up to date
        # exits; it is started again a few seconds later.
        f"RestartSec={10 if unit.oneshot else 5}",
        "LimitNOFILE=65536",
    ]
    if unit.low_port:
        lines.append("AmbientCapabilities=CAP_NET_BIND_SERVICE")
    lines += ["", "[Install]", f"WantedBy={TARGET}", ""]
    return "\n".join(lines)


def render_target(host: str, units: list[Unit]) -> str:
    wants = " ".join(u.file_name for u in units)
    return "\n".join([
        "# Rendered by `carematrix deploy render`; edits are overwritten by the next render.",
        "[Unit]",
        f"Description=CareMatrix processes of {host}",
        f"Wants={wants}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def parse_exec(line: str) -> list[str]:
    """The words of an ExecStart= value as :func:`exec_word` wrote them (for tools and
    tests that start a unit's command without systemd)."""
    import shlex

    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line)]
