"""Org sync at hospital scale: a synthetic org (N staff over M units) synced from scratch,
then re-synced with nothing changed; plus the cost our join/invite check adds, measured as
invite+join round trips into a unit room against the same in plain Synapse."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import aiohttp
import yaml

from bench.roundtrip import _call, _login, _register
from bench.stats import comparison, summary
from carematrix import identity
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Settings
from carematrix_ops.seed import Seeder
from carematrix_ops.supervisor import Stack
from tests.paths import DEMO_POLICY_DIR
from tests.ports import free_port_pair
from tests.support import rooms_and_events_by_instance


def synthetic_org(staff: int, units: int, root: str = "hosp", root_name: str = "Benchmark Hospital",
                  seed: int = 7) -> tuple[dict, list[dict]]:
    """A unit tree (root -> departments -> wards, ``units`` in all) and ``staff`` people
    spread over its wards, as the policy's YAML has them; the first person is an announcer."""
    rng = random.Random(seed)
    departments = max(1, round((units - 1) ** 0.5))
    wards_per = max(0, (units - 1 - departments) // departments)
    prefix = "" if root == "hosp" else f"{root}-"
    tree, leaves = [], []
    for d in range(departments):
        wards = [{"id": f"{prefix}d{d:02d}-w{w:02d}", "name": f"Dept {d} Ward {w}"} for w in range(wards_per)]
        leaves += [w["id"] for w in wards] or [f"{prefix}d{d:02d}"]
        tree.append({"id": f"{prefix}d{d:02d}", "name": f"Department {d}", "children": wards})
    people = [
        {
            "staff_number": f"S{i:05d}",
            "name": f"Staff {i}",
            "units": [rng.choice(leaves)],
            "position": "nurse",
            "title": "Nurse",
            **({"roles": ["announcer"]} if i == 0 else {}),
        }
        for i in range(staff)
    ]
    return {"id": root, "name": root_name, "children": tree}, people


def synthetic_policy(directory: Path, staff: int, units: int, seed: int = 7) -> None:
    """Hospital -> departments -> wards, ``units`` in all; staff spread over the wards."""
    tree, people = synthetic_org(staff, units, seed=seed)
    (directory / "hospital.yaml").write_text(
        yaml.safe_dump(
            {
                "hospital": {"name": "Benchmark Hospital"},
                "roles": {"announcer": {}},
                "units": [tree],
            }
        )
    )
    (directory / "staff.yaml").write_text(yaml.safe_dump({"staff": people}))
    rooms = yaml.safe_load((DEMO_POLICY_DIR / "rooms.yaml").read_text())
    rooms["standard_rooms"] = [
        {"id": "announcements", "class": "announcement", "units": ["hosp"], "alias": "announcements", "name": "Announcements"},
        {"id": "team", "class": "department", "units": "all", "name": "{unit_name} team"},
    ]
    (directory / "rooms.yaml").write_text(yaml.safe_dump(rooms, allow_unicode=True))


async def _join_cost(session: aiohttp.ClientSession, base: str, inviter: str, joiners: list[str], room: str) -> list[float]:
    samples = []
    for token, user_id in joiners:
        start = time.perf_counter()
        await _call(session, "POST", f"{base}/_matrix/client/v3/rooms/{room}/invite", inviter, {"user_id": user_id})
        await _call(session, "POST", f"{base}/_matrix/client/v3/rooms/{room}/join", token, {})
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def access_check_cost(work: Path, joins: int) -> dict:
    """invite+join into an invite-only room: plain Synapse vs a CareMatrix unit room, where
    both the invite and the join pass the org-scope check."""
    plain = prepare(Settings(data_dir=work / "plain", port=free_port_pair(), relaxed_rate_limits=True, hl7_port=0, turn_port=0, carematrix_enabled=False))
    policy_dir = work / "access-policy"
    policy_dir.mkdir()
    synthetic_policy(policy_dir, staff=joins + 1, units=3)
    ours = prepare(Settings(data_dir=work / "ours", port=free_port_pair(), relaxed_rate_limits=True, hl7_port=0, turn_port=0, policy_dir=policy_dir))
    stacks = [Stack(plain), Stack(ours)]
    try:
        for s in stacks:
            s.start()
        Seeder(ours).run()
        async with aiohttp.ClientSession() as session:
            pbase, obase = plain.settings.homeserver_url, ours.settings.homeserver_url
            p_inviter = await _register(session, plain, "inviter", "bench-password")
            p_joiners = [(await _register(session, plain, f"j{i}", "bench-password"), f"@j{i}:localhost") for i in range(joins)]
            p_room = (await _call(session, "POST", f"{pbase}/_matrix/client/v3/createRoom", p_inviter, {"preset": "private_chat"}))["room_id"]
            # In ours, the bot-made team room of the only department; the bot invites.
            room = (await _call(session, "GET", f"{obase}/_matrix/client/v3/directory/room/%23d00-team:localhost", ours.secrets["as_token"]))["room_id"]
            members = (await _call(session, "GET", f"{obase}/_matrix/client/v3/rooms/{room}/joined_members", ours.secrets["as_token"]))["joined"]
            o_joiners = []
            for uid in sorted(members):
                if uid.startswith("@s") and len(o_joiners) < joins:
                    await _call(session, "POST", f"{obase}/_matrix/client/v3/rooms/{room}/kick", ours.secrets["as_token"], {"user_id": uid})
                    o_joiners.append((await _login(session, obase, identity.localpart(uid), ours.secrets["demo_password"]), uid))
            p_samples, o_samples = [], []
            for i in range(0, joins, 25):
                p_samples += await _join_cost(session, pbase, p_inviter, p_joiners[i : i + 25], p_room)
                o_samples += await _join_cost(session, obase, ours.secrets["as_token"], o_joiners[i : i + 25], room)
    finally:
        for s in stacks:
            s.stop()
    return comparison(f"invite + join into an invite-only room, {joins} joins each, SQLite", summary(p_samples), summary(o_samples))


async def sync_at_scale(work: Path, staff: int, units: int, database: str, db_url: str | None, floor: bool = True,
                        workers: bool = False) -> dict:
    """``workers``: on the worker deployment (PostgreSQL); the result also says how many
    rooms and events each event persister wrote."""
    policy_dir = work / f"policy-{database}"
    policy_dir.mkdir(parents=True, exist_ok=True)
    synthetic_policy(policy_dir, staff, units)
    d = prepare(
        # The worker deployment's UNIX sockets live in its data dir: keep its path short.
        Settings(data_dir=work / ("wk" if workers else f"org-{database}"), port=free_port_pair(),
                 relaxed_rate_limits=True, hl7_port=0, turn_port=0, policy_dir=policy_dir, database=database,
                 db_url=db_url, demo=False, workers=workers)
    )
    stack = Stack(d)
    try:
        stack.start()
        seeder = Seeder(d)
        seeder.wait_for_background_updates()
        seeder.promote_bot()
        t0 = time.perf_counter()
        first = seeder.org_sync()
        t1 = time.perf_counter()
        second = seeder.org_sync()
        t2 = time.perf_counter()
        persisters = rooms_and_events_by_instance(db_url) if database == "postgres" and db_url else {}
    finally:
        stack.stop()
    if not floor:
        return {"from_scratch_s": round(t1 - t0, 1), "from_scratch_actions": len(first["actions"]),
                "from_scratch_phases_s": first.get("phase_seconds", {}),
                "from_scratch_errors": first["errors"][:5], "from_scratch_error_count": len(first["errors"]),
                "resync_unchanged_s": round(t2 - t1, 2), "resync_actions": len(second["actions"]),
                "rooms_and_events_by_instance": persisters}
    floor = await _plain_synapse_floor(work, policy_dir, database, db_url)
    return {
        "plain_synapse_same_plan_s": floor["seconds"],
        "plain_synapse_events_per_s": floor["events_per_s"],
        "carematrix_events_per_s": round(floor["events"] / (t1 - t0), 1),
        "ratio": round((t1 - t0) / floor["seconds"], 3),
        "benchmark": f"org sync, {staff} staff / {len(yaml.safe_load((policy_dir / 'hospital.yaml').read_text())['units'][0]['children']) } departments ({units} units), {database}",
        "from_scratch_s": round(t1 - t0, 1),
        "from_scratch_actions": len(first["actions"]),
        "from_scratch_errors": len(first["errors"]),
        "from_scratch_phases_s": first.get("phase_seconds", {}),
        "plain_synapse_phases_s": floor["phases"],
        "resync_unchanged_s": round(t2 - t1, 2),
        "resync_actions": len(second["actions"]),
    }



async def _plain_synapse_floor(work: Path, policy_dir: Path, database: str, db_url: str | None) -> dict:
    """The same plan (accounts, spaces and rooms, joins, locks), applied by the same code with
    the same concurrency to a Synapse without our modules or appservice: what Synapse itself
    needs for that many events on this machine."""
    from mautrix.api import HTTPAPI

    from appservice.homeserver import Homeserver
    from appservice.org_matrix import OrgMatrix
    from carematrix.org.plan import Observed, desired_state, plan
    from carematrix.policy import load_policy

    if db_url:
        db_url = db_url.rsplit("/", 1)[0] + "/" + db_url.rsplit("/", 1)[1] + "_plain"
    d = prepare(Settings(data_dir=work / f"plain-{database}", port=free_port_pair(), relaxed_rate_limits=True,
                         hl7_port=0, turn_port=0, policy_dir=policy_dir, database=database, db_url=db_url,
                         carematrix_enabled=False, demo=False))
    stack = Stack(d)
    try:
        stack.start()
        seeder = Seeder(d)
        seeder.wait_for_background_updates()
        token = seeder.admin_token()
        actions = plan(desired_state(load_policy(policy_dir)), Observed())
        async with aiohttp.ClientSession() as session:
            api = HTTPAPI(d.settings.homeserver_url, token, client_session=session)
            homeserver = Homeserver(lambda: api, d.settings.server_name)
            matrix = OrgMatrix(homeserver, d.admin_user_id)
            t0 = time.perf_counter()
            errors = await matrix.apply(actions, None)
            seconds = time.perf_counter() - t0
        # Room creation is ~8 events (create, member, power levels, join rules, history,
        # class, name, topic, alias) — counted as such; every other action is one event.
        events = sum(8 if a.kind == "create_room" else 1 for a in actions if a.kind != "create_account")
        return {"seconds": round(seconds, 1), "events": events, "events_per_s": round(events / seconds, 1),
                "errors": len(errors), "phases": matrix.phase_seconds}
    finally:
        stack.stop()


def format_sync(result: dict) -> str:
    return (
        f"{result['benchmark']}\n"
        f"  from scratch: {result['from_scratch_s']} s, {result['from_scratch_actions']} actions, "
        f"{result['from_scratch_errors']} errors; by step {result['from_scratch_phases_s']}\n"
        f"  re-sync, nothing changed: {result['resync_unchanged_s']} s, {result['resync_actions']} actions\n"
        f"  plain Synapse, same plan, same code: {result['plain_synapse_same_plan_s']} s "
        f"({result['plain_synapse_events_per_s']} events/s; CareMatrix {result['carematrix_events_per_s']}/s; "
        f"ratio {result['ratio']}); by step {result['plain_synapse_phases_s']}"
    )


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--staff", type=int, default=5000)
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--database", default="sqlite")
    parser.add_argument("--db-url")
    parser.add_argument("--no-floor", action="store_true", help="skip the plain-Synapse run (quick iterations)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = asyncio.run(sync_at_scale(Path(tmp), args.staff, args.units, args.database, args.db_url, not args.no_floor))
    if not args.no_floor:
        print(format_sync(out))
    print(json.dumps(out))
