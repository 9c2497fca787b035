"""`pip install .` (not editable) into a fresh virtualenv, then `carematrix up --data-dir …`
from a directory outside the checkout: CareMatrix as an admin runs it without a checkout.

The virtualenv borrows CareMatrix's dependencies from the environment running the tests (one
.pth line naming its site-packages; the .pth files in there are not run, so an editable
install of a checkout stays out) and has nothing else: no checkout on its path, no
PYTHONPATH, and every command runs from an unrelated directory. Nothing is downloaded: the
build uses the setuptools of the test environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from nio import AsyncClient, LoginResponse, RoomCreateError, RoomSendResponse

from tests.paths import DEMO_POLICY_DIR, REPO_ROOT
from tests.ports import free_port_run
from tests.support import (
    UpProcess,
    eventually,
    log_files,
    log_problems,
    port_is_free,
    same_tree,
    wait_for_event,
)

pytestmark = pytest.mark.e2e

# What a source tree holds besides the sources: not part of what `pip install .` builds from.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"
)
OUR_PACKAGES = ("carematrix", "carematrix_ops", "synapse_modules", "appservice", "bridges")


@dataclass
class Installed:
    venv: Path
    site: Path  # the virtualenv's site-packages, where the wheel went
    elsewhere: Path  # a directory unrelated to any checkout, where commands run
    env: dict[str, str]

    def run(self, *argv: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(a) for a in argv], cwd=self.elsewhere, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess:
        return self.run(self.venv / "bin" / "carematrix", *args)


def clean_env() -> dict[str, str]:
    """This environment without anything that would point Python or CareMatrix somewhere."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CAREMATRIX_", "VIRTUAL_ENV"))}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    # A copy of the checkout: the build writes build/ and *.egg-info beside the sources.
    source = base / "source"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_SOURCES)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=elsewhere, env=clean_env(), capture_output=True, text=True, check=True,
    )
    site = Path(probe.stdout.strip())
    dependencies = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "carematrix-test-dependencies.pth").write_text("".join(f"{p}\n" for p in dependencies))
    result = Installed(venv, site, elsewhere, clean_env())
    pip = result.run(
        venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
        "--ignore-installed", "--no-cache-dir", source,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    shutil.rmtree(source)  # what runs from now on can only be the installed copy
    return result


def test_the_installed_package_runs_from_its_install_location_only(installed: Installed):
    probe = installed.run(
        installed.venv / "bin" / "python", "-c",
        "import json, sys, importlib; from carematrix_ops import resources; "
        f"mods = {{m: importlib.import_module(m).__file__ for m in {OUR_PACKAGES!r}}}; "
        "print(json.dumps({'modules': mods, 'path': sys.path, 'checkout': str(resources.CHECKOUT)}))",
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    for module, file in found["modules"].items():
        assert Path(file).is_relative_to(installed.site), f"{module} imported from {file}"
    holding_ours = [p for p in found["path"] if p and Path(p) != installed.site
                    and any((Path(p) / m).exists() for m in OUR_PACKAGES)]
    assert holding_ours == []
    assert found["checkout"] == "None"
    for name in ("templates/homeserver.yaml.in", "demo/data/hospital.json", "demo/policies/staff.yaml"):
        assert (installed.site / "carematrix_ops" / name).is_file(), name


async def test_up_runs_the_demo_hospital_from_any_directory(installed: Installed):
    data_dir = installed.elsewhere.parent / "data"
    port = free_port_run(4)  # homeserver, appservice, demo EMR, demo PACS
    up = UpProcess(data_dir, port, cli=str(installed.venv / "bin" / "carematrix"), env=installed.env,
                   cwd=installed.elsewhere)
    try:
        banner = up.wait_ready()
        # The data dir's own policy, copied from the demo hospital on this first start.
        assert f"Policy         : {data_dir / 'policies'} " in banner
        assert same_tree(data_dir / "policies", DEMO_POLICY_DIR)
        assert "Demo EMR       : patients P20261101 王建国" in banner  # the packaged demo data
        status = installed.cli("status", "--data-dir", data_dir)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "homeserver  OK" in status.stdout and "appservice  OK" in status.stdout
        password = re.search(r"password for all: (\S+)\)", banner).group(1)
        assert (await ping_the_bot(port, "n3002", password)).startswith("pong")
        # The console's pages and style sheet come from the installed package.
        assert f"Console        : http://localhost:{port}/_carematrix/console " in banner
        assert re.search(r"n3002 .*\[charge_nurse, scheduler\]; console: board, alerts, fatigue", banner)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/_carematrix/console/login") as resp:
                assert resp.status == 200 and "登录 Sign in" in await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/_carematrix/console/static/console.css") as resp:
                assert resp.status == 200 and resp.content_type == "text/css"
    finally:
        code, rest = up.interrupt()
    assert code == 0, rest
    assert "CareMatrix stopped." in rest
    assert all(port_is_free(port + i) for i in range(4)), "a child process outlived carematrix up"
    assert log_problems(dict.fromkeys(log_files(data_dir), 0)) == []
    assert list(installed.elsewhere.iterdir()) == []  # nothing written where it was run from


async def ping_the_bot(port: int, localpart: str, password: str) -> str:
    client = AsyncClient(f"http://127.0.0.1:{port}", f"@{localpart}:localhost")
    bot = "@carematrix:localhost"
    try:
        assert isinstance(await client.login(password), LoginResponse)
        dm = await client.room_create(is_direct=True, invite=[bot])
        assert not isinstance(dm, RoomCreateError), dm

        async def bot_joined() -> bool:
            members = await client.joined_members(dm.room_id)
            return bot in {m.user_id for m in members.members}

        await eventually(bot_joined)
        sent = await client.room_send(dm.room_id, "m.room.message", {"msgtype": "m.text", "body": "!ping"})
        assert isinstance(sent, RoomSendResponse), sent
        reply = await wait_for_event(client, dm.room_id, lambda e: e["sender"] == bot and e["type"] == "m.room.message")
        return reply["content"]["body"]
    finally:
        await client.close()
