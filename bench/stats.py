"""Percentiles and the comparison table every benchmark prints."""

from __future__ import annotations

import math
import statistics


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); exact for the sample sizes we use."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(samples_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 50), 3),
        "p99_ms": round(percentile(samples_ms, 99), 3),
        "mean_ms": round(statistics.fmean(samples_ms), 3),
    }


def comparison(
    name: str,
    baseline: dict[str, float],
    ours: dict[str, float],
    labels: tuple[str, str] = ("plain Synapse", "CareMatrix"),
) -> dict[str, object]:
    return {
        "benchmark": name,
        "labels": list(labels),
        "baseline": baseline,
        "carematrix": ours,
        "ratio_p50": round(ours["p50_ms"] / baseline["p50_ms"], 3),
        "ratio_p99": round(ours["p99_ms"] / baseline["p99_ms"], 3),
    }


def format_comparison(result: dict) -> str:
    b, c = result["baseline"], result["carematrix"]
    base_label, our_label = result.get("labels", ("plain Synapse", "CareMatrix"))
    return "\n".join(
        [
            f"{result['benchmark']}",
            f"  {'':<16}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}",
            f"  {base_label:<16}{b['n']:>6}{b['p50_ms']:>10.2f}{b['p99_ms']:>10.2f}{b['mean_ms']:>10.2f}",
            f"  {our_label:<16}{c['n']:>6}{c['p50_ms']:>10.2f}{c['p99_ms']:>10.2f}{c['mean_ms']:>10.2f}",
            f"  ratio p50 {result['ratio_p50']:.3f}   ratio p99 {result['ratio_p99']:.3f}",
        ]
    )
