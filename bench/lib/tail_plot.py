#!/usr/bin/env python3
"""Latency-vs-rate plot (SVG, no dependencies) of a bench/tail.sh result directory.

Usage: tail_plot.py OUT_DIR OUT.svg VARIANT...

One panel per client count (1,000 and 10,000): p50 (dashed) and p99 (solid) in ms against the
send rate, one colour per variant, medians over rounds.
"""

import statistics
import sys
from pathlib import Path

# The result files are read the way the table reads them (same directory as this script).
from tail_table import rounds_of

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
W, H = 420, 300
M = dict(left=56, right=26, top=34, bottom=44)


def series(out, variant, clients):
    by_rate = {}
    for run in rounds_of(out, variant, clients):
        for s in run.get("steps", []):
            by_rate.setdefault(s["rate"], []).append(s["latency"])
    return [
        (r, statistics.median(l["p50_ms"] for l in ls), statistics.median(l["p99_ms"] for l in ls))
        for r, ls in sorted(by_rate.items())
    ]


def panel(x0, clients, data, variants):
    rates = sorted({r for v in variants for (r, _, _) in data.get(v, [])})
    if not rates:
        return ""
    ymax = max(p99 for v in variants for (_, _, p99) in data.get(v, [])) * 1.1
    pw, ph = W - M["left"] - M["right"], H - M["top"] - M["bottom"]

    def px(i):
        return x0 + M["left"] + (pw * i / max(1, len(rates) - 1))

    def py(y):
        return M["top"] + ph - ph * y / ymax

    out = [f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-weight="bold">{clients:,} clients</text>']
    out.append(f'<rect x="{x0 + M["left"]}" y="{M["top"]}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for k in range(5):
        y = ymax * k / 4
        out.append(f'<line x1="{x0 + M["left"]}" x2="{x0 + M["left"] + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 + M["left"] - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.0f}</text>')
    for i, r in enumerate(rates):
        out.append(f'<text x="{px(i):.1f}" y="{M["top"] + ph + 16}" text-anchor="middle">{r:,}</text>')
    out.append(f'<text x="{x0 + M["left"] + pw / 2}" y="{H - 8}" text-anchor="middle">to_all msg/s</text>')
    out.append(f'<text x="{x0 + 14}" y="{M["top"] + ph / 2}" text-anchor="middle" transform="rotate(-90 {x0 + 14} {M["top"] + ph / 2})">latency ms</text>')
    for c, v in enumerate(variants):
        pts = data.get(v, [])
        colour = COLOURS[c % len(COLOURS)]
        for idx, dash in ((1, "5,4"), (2, "")):
            path = " ".join(f"{px(rates.index(p[0])):.1f},{py(p[idx]):.1f}" for p in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
        for p in pts:
            out.append(f'<circle cx="{px(rates.index(p[0])):.1f}" cy="{py(p[2]):.1f}" r="3" fill="{colour}"/>')
    return "\n".join(out)


def main():
    out, svg, variants = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    counts = sorted({int(f.name.split("-")[1]) for v in variants for f in (out / v).glob("fanout-*-r1.json")})
    parts = []
    for i, n in enumerate(counts):
        data = {v: series(out, v, n) for v in variants}
        parts.append(panel(i * W, n, data, variants))
    legend = []
    for c, v in enumerate(variants):
        x = 70 + c * 150
        legend.append(f'<line x1="{x}" x2="{x + 24}" y1="{H + 14}" y2="{H + 14}" stroke="{COLOURS[c % len(COLOURS)]}" stroke-width="2"/>')
        legend.append(f'<text x="{x + 30}" y="{H + 18}">{v}</text>')
    legend.append(f'<text x="{70 + len(variants) * 150}" y="{H + 18}">solid: p99, dashed: p50 (median of rounds)</text>')
    width = W * max(1, len(counts))
    svg.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H + 30}" '
        f'font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n'
        + "\n".join(parts + legend)
        + "\n</svg>\n"
    )


if __name__ == "__main__":
    main()
