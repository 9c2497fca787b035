"""The alarm-fatigue report's charts, drawn by pygal (a maintained SVG charting library) on the
server. The console serves each as an SVG image with its own Content-Security-Policy: the
chart's styles are inline, and its script (pygal's tooltips) never runs — images do not run
scripts, and the policy forbids them besides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pygal
from pygal.style import Style

from carematrix.console.fatigue import TTA_BUCKETS, Row

SVG_CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'"

_STYLE = Style(
    background="white", plot_background="white", foreground="#1d2733", foreground_strong="#1d2733",
    foreground_subtle="#5b6b7c", colors=("#0b6e99", "#b42318", "#d97706", "#1a7f37"),
    font_family='system-ui, "Noto Sans CJK SC", "WenQuanYi Zen Hei", sans-serif',
    label_font_size=11, major_label_font_size=11, legend_font_size=12, title_font_size=14,
)


def _chart(kind: Any, title: str) -> Any:
    return kind(
        style=_STYLE, title=title, width=760, height=360, legend_at_bottom=True, js=[],
        x_label_rotation=30, print_values=False, show_y_guides=True, truncate_label=-1,
    )


def _whole_numbers(chart: Any, top: int) -> None:
    """Counts are whole: the axis is labelled 0, 1, 2 ... (about ten labels at most)."""
    step = max(1, -(-top // 10))
    chart.y_labels = list(range(0, top + step + 1, step))


def pages_per_shift(rows: Sequence[Row]) -> bytes:
    """Pages, critical alerts and after-hours notifications per shift, all roles together."""
    shifts = sorted({r.period for r in rows if r.kind == "role" and r.period != "week"})
    totals = {s: [0, 0, 0] for s in shifts}
    for r in rows:
        if r.kind == "role" and r.period != "week":
            t = totals[r.period]
            t[0] += r.tally.pages
            t[1] += r.tally.critical
            t[2] += r.tally.after_hours
    chart = _chart(pygal.Bar, "每班呼叫 Pages per shift")
    chart.x_labels = [s.replace(" day", " 白班 day").replace(" night", " 夜班 night") for s in shifts]
    _whole_numbers(chart, max((t[0] for t in totals.values()), default=0))
    chart.add("呼叫 Pages", [totals[s][0] for s in shifts])
    chart.add("危急 Critical", [totals[s][1] for s in shifts])
    chart.add("非工作时间 After hours", [totals[s][2] for s in shifts])
    return bytes(chart.render())


def time_to_acknowledge(rows: Sequence[Row]) -> bytes:
    """How long acknowledgement took, per role, for the week (stacked buckets)."""
    weekly = [r for r in rows if r.kind == "role" and r.period == "week"]
    chart = _chart(pygal.StackedBar, "确认用时 Time to acknowledge")
    chart.x_labels = [r.who for r in weekly]
    _whole_numbers(chart, max((r.tally.pages for r in weekly), default=0))
    for name, _ in TTA_BUCKETS:
        chart.add(name, [r.tally.tta_buckets()[name] for r in weekly])
    chart.add("未确认 Not acknowledged", [r.tally.unacknowledged for r in weekly])
    return bytes(chart.render())
