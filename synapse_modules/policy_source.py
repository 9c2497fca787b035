"""One policy per Synapse process, shared by every CareMatrix module in it.

Synapse reads each module's config (``parse_config``) and then builds the modules, in every
process (main and workers). The first to ask loads the policy — when its config is read, so
a broken policy stops Synapse with a config error naming file and line — and every module
after it (audit, policy, LDAP and SSO sign-in) gets the same holder: one load at start and
one parse per edit in each process, not one per module.

Edits are picked up by a background poll whose work runs on Synapse's thread pool
(``ModuleApi.defer_to_thread``, which gives the thread a child of the poll's logging
context), never on the reactor: that thread has a child process parse the edit and only
takes in the result (``carematrix.policy.parse_process``), since a 5,000-staff parse in the
thread itself would hold the interpreter lock against the reactor.
"""

from __future__ import annotations

from pathlib import Path

from synapse.module_api import ModuleApi

from carematrix.policy import PolicyInvalid
from carematrix.policy.holder import PolicyHolder

_holders: dict[Path, PolicyHolder] = {}
_poll_ms: dict[Path, float] = {}


def _key(policy_dir: Path | str) -> Path:
    return Path(policy_dir).absolute()


def policy_holder(policy_dir: Path | str) -> PolicyHolder:
    """This process's holder of the policy in ``policy_dir``, loaded on first use; raises
    ``PolicyInvalid`` (and loads again next time) if the policy is not valid."""
    key = _key(policy_dir)
    holder = _holders.get(key)
    if holder is None:
        holder = _holders[key] = PolicyHolder(policy_dir)
    return holder


def load_at_config(policy_dir: Path | str) -> None:
    """The process's one load, from a module's ``parse_config``: a broken policy is a
    ``ValueError`` naming file and line, which the module turns into Synapse's config error."""
    try:
        policy_holder(policy_dir)
    except PolicyInvalid as exc:
        raise ValueError(f"the policy in {policy_dir} is invalid:\n{exc}") from exc


def polled(policy_dir: Path | str) -> bool:
    """Does a module of this process poll this policy for edits?"""
    return _key(policy_dir) in _poll_ms


def keep_fresh(api: ModuleApi, policy_dir: Path | str, interval_ms: float) -> PolicyHolder:
    """Poll for edits every ``interval_ms`` on every instance. Modules ask for their own
    interval; a module asking no more often than one already polling adds nothing."""
    holder = policy_holder(policy_dir)
    key = _key(policy_dir)
    if interval_ms < _poll_ms.get(key, float("inf")):
        _poll_ms[key] = interval_ms
        api.looping_background_call(
            holder.refresh, interval_ms, api.defer_to_thread, desc="carematrix_policy_reload", run_on_all_instances=True
        )
    return holder
