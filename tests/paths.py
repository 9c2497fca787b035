"""Where the checkout keeps what tests and benchmarks read (they always run from one)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The demo hospital's policy, as `make run` uses it; tests that change it work on a copy.
DEMO_POLICY_DIR = REPO_ROOT / "policies"
