#!/usr/bin/env python3
"""Markdown table of a bench/tail.sh result directory.

Usage: tail_table.py OUT_DIR VARIANT...

For every scenario (clients x rate): p50 / p99 / max latency and loss of each variant, the
median over its rounds (every round is shown as a range too), and each variant's p99 as a ratio
to `single` (when it ran). Then the run queue delay per delivered message and the server CPU per
delivery, which locate where the time goes, and RSS per idle connection.
"""

import json
import statistics
import sys
from pathlib import Path


def load(path):
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def rounds_of(out, variant, clients):
    runs = []
    for f in sorted((out / variant).glob(f"fanout-{clients}-r*.json")):
        j = load(f)
        if j:
            runs.append(j)
    return runs


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, unit=""):
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}{unit}"
    if abs(x) >= 10:
        return f"{x:.1f}{unit}"
    return f"{x:.2f}{unit}"


def span(xs, unit=""):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    lo, hi = min(xs), max(xs)
    return fmt(lo, unit) if lo == hi else f"{fmt(lo)}–{fmt(hi, unit)}"


def main():
    out = Path(sys.argv[1])
    variants = sys.argv[2:]
    print((out / "machine.txt").read_text().strip().replace("\n", "  \n"))
    print()
    scenarios = []
    for v in variants:
        for f in (out / v).glob("fanout-*-r1.json"):
            n = int(f.name.split("-")[1])
            if n not in scenarios:
                scenarios.append(n)
    scenarios.sort()

    # steps[(variant, clients, rate)] = list of step dicts, one per round
    steps = {}
    for v in variants:
        for n in scenarios:
            for run in rounds_of(out, v, n):
                for s in run.get("steps", []):
                    steps.setdefault((v, n, s["rate"]), []).append(s)

    cols = " | ".join(f"{v} p50 / p99 / max ms, loss" for v in variants)
    ratio_cols = [v for v in variants if v != "single" and "single" in variants]
    header = f"| clients × msg/s | {cols} |" + "".join(f" {v} / single p99 |" for v in ratio_cols)
    print(header)
    print("|" + "---|" * (1 + len(variants) + len(ratio_cols)))
    for n in scenarios:
        rates = sorted({r for (v, c, r) in steps if c == n})
        for rate in rates:
            cells, p99s = [], {}
            for v in variants:
                ss = steps.get((v, n, rate), [])
                if not ss:
                    cells.append("—")
                    continue
                p50 = med([s["latency"]["p50_ms"] for s in ss])
                p99 = med([s["latency"]["p99_ms"] for s in ss])
                mx = med([s["latency"]["max_ms"] for s in ss])
                loss = [s["loss_pct"] for s in ss]
                p99s[v] = p99
                cells.append(
                    f"{fmt(p50)} / **{fmt(p99)}** / {fmt(mx)} ({span([s['latency']['p99_ms'] for s in ss])}), "
                    f"{span(loss, ' %')}"
                )
            row = f"| {n:,} × {rate:,} | " + " | ".join(cells) + " |"
            for v in ratio_cols:
                if v in p99s and p99s.get("single"):
                    row += f" {p99s[v] / p99s['single']:.2f}× |"
                else:
                    row += " — |"
            print(row)
    print()
    print("Median over rounds; the range in parentheses is p99 over the rounds, loss over the rounds.")
    print()

    print("Where the time goes, per step (medians over rounds): server CPU per delivery, and run")
    print("queue delay (threads ready to run, waiting for a CPU) of the servers and of the load")
    print("generator, in ms per wall second of the step.")
    print()
    print("| clients × msg/s | " + " | ".join(
        f"{v}: µs CPU/delivery, server wait, loadgen wait" for v in variants) + " |")
    print("|" + "---|" * (1 + len(variants)))
    for n in scenarios:
        rates = sorted({r for (v, c, r) in steps if c == n})
        for rate in rates:
            cells = []
            for v in variants:
                ss = steps.get((v, n, rate), [])
                if not ss:
                    cells.append("—")
                    continue

                def per_delivery(s):
                    d = s.get("delivered") or 0
                    return s["cpu"]["server_total_s"] * 1e6 / d if d else None

                def wait(s, key):
                    c = s["cpu"]
                    w = c.get("wall_s") or 0
                    if not w:
                        return None
                    if key == "server":
                        return (c.get("primary_wait_s", 0) + c.get("workers_wait_s", 0)) * 1e3 / w
                    return c.get("loadgen_wait_s", 0) * 1e3 / w

                cells.append(
                    f"{fmt(med([per_delivery(s) for s in ss]))}, "
                    f"{fmt(med([wait(s, 'server') for s in ss]))}, "
                    f"{fmt(med([wait(s, 'loadgen') for s in ss]))}"
                )
            print(f"| {n:,} × {rate:,} | " + " | ".join(cells) + " |")
    print()

    # Per worker: the sender's own worker against the workers its broadcasts reach over the bus.
    split = []
    for v in variants:
        for n in scenarios:
            for run in rounds_of(out, v, n):
                sw = set(run.get("sender_workers") or [])
                for s in run.get("steps", []):
                    by = s.get("by_worker") or {}
                    if len(by) < 2 or not sw:
                        continue
                    own = [x["p99_ms"] for w, x in by.items() if w in sw]
                    other = [x["p99_ms"] for w, x in by.items() if w not in sw]
                    if own and other:
                        split.append((v, n, s["rate"], max(own), max(other)))
    if split:
        print("p99 on the sender's own worker against the other workers (reached over the bus),")
        print("median over rounds:")
        print()
        print("| variant | clients × msg/s | p99 sender's worker ms | p99 other workers ms |")
        print("|---|---|---|---|")
        keys = sorted({(v, n, r) for (v, n, r, _, _) in split}, key=lambda k: (variants.index(k[0]), k[1], k[2]))
        for k in keys:
            own = med([o for (v, n, r, o, _) in split if (v, n, r) == k])
            other = med([x for (v, n, r, _, x) in split if (v, n, r) == k])
            print(f"| {k[0]} | {k[1]:,} × {k[2]:,} | {fmt(own)} | {fmt(other)} |")
        print()

    print("| RSS per idle connection | " + " | ".join(variants) + " |")
    print("|" + "---|" * (1 + len(variants)))
    cells = []
    for v in variants:
        hs = list((out / v).glob("hold-*.json"))
        j = load(hs[0]) if hs else None
        cells.append(f"{j['rss_per_conn_kib']:.1f} KiB ({j['ok']:,} conns, {len(j['procs'])} procs)" if j else "—")
    print("| KiB | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
