"""``make bench``: run every benchmark, print the comparison tables, save JSON under var/bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from bench import roundtrip
from bench.stats import format_comparison
from carematrix.deploy import REPO_ROOT


def machine() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "bench")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="carematrix-bench-"))
    try:
        result = asyncio.run(roundtrip.measure(work, args.messages, args.warmup, args.batch))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"] = machine()
    print(format_comparison(result))
    print(f"  machine: {result['machine']}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"roundtrip-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  saved {out}")


if __name__ == "__main__":
    main()
