"""Heavy physics check of the Stream runner: fused attention, split-KV at any context, the strategy search.

For every preset, scheme, context L and batch B of a model's decode (default: DeepSeek-V3, every scheme of the
model but the GQA/MQA baselines, L = 1k/4k/32k, B = 1 and 32, every preset; `--off-grid` adds the contexts and
batches of OFF_GRID): the winner of the strategy search (or the strategy forced with --strategy), latency over the
overlapped roofline and over the serial roofline (attention-schemes §8.0, how a step-by-step engine is judged),
engine DRAM over the analytic bytes plus the padding a split-KV graph read, the bound, the step with most cycles
(its share of the cycles and its attained fraction of peak MAC/s), the strategies the search skipped, and the wall
time; then every point that misses a target (at most SERIAL_TARGET x its serial roofline, at least 1.0 x both
bounds, DRAM within 5 % of analytic plus padding) with its node and cause (the step furthest above its own
roofline), and what every strategy gave.

The points run as a sweep (`run_sweep`: parallel workers, each finished point committed to the store at once), so
an interrupted report resumes where it stopped, and the rows a reproduction already stored with the same code are
reused (`--db results/results.sqlite`). Prints Markdown; `--json` writes the rows too.

    python scripts/physics_report.py [--db results/physics.sqlite] [--workers 2] [--model deepseek-v3]
        [--platforms h100-like h20-like] [--schemes mla-absorb mha] [--contexts 4096 32768] [--batch 1 32]
        [--off-grid] [--strategy auto] [--timeout 1800] [--json out.json] [--report-only]
"""

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from stream_mla.claims import planned_rereads, step_name
from stream_mla.errors import SpecError
from stream_mla.models import resolve_name_or_path
from stream_mla.platforms import PRESETS
from stream_mla.sweeps.runner import run_sweep
from stream_mla.sweeps.spec import SweepSpec
from stream_mla.sweeps.store import ResultStore
from stream_mla.workloads import build, registry
from stream_mla.workloads.counts import step_counts
from stream_mla.workloads.steps import serial_roofline_s, steps

SERIAL_TARGET = 1.10  # x the serial roofline (§8.0): how far a step-by-step engine may run above it
DRAM_TARGET = 1.05  # engine DRAM / (analytic + padding)
BASELINES = ("gqa", "mqa")  # MHA variants the paper does not compare (gqa needs --kv-heads on an MLA model)
OFF_GRID = {"contexts": [1000, 3000, 5000, 16447, 32831, 100000], "batch": [1, 3, 48]}


def time_miss(row: dict) -> float | None:
    """The row's latency over its serial roofline where it misses its target (None where it meets it)."""
    ratio = row["serial"]
    return ratio if ratio > SERIAL_TARGET else None


def dram_ratio(row: dict) -> float:
    """Engine DRAM over the analytic bytes plus what a padded split-KV graph read beyond them."""
    return row["engine_dram_bytes"] / (row["dram_bytes"] + (row.get("pad_bytes") or 0))


def misses(row: dict) -> list[str]:
    """The targets a row misses (empty: none)."""
    out = []
    if (ratio := time_miss(row)) is not None:
        out.append(f"{ratio:.3f}x the serial roofline (target {SERIAL_TARGET}x)")
    if (below := min(row["latency_s"] / row["roofline_s"], row["serial"])) < 1.0:
        out.append(f"{below:.4f}x a bound (below physics)")
    if dram_ratio(row) > DRAM_TARGET:
        out.append(f"DRAM {dram_ratio(row):.3f}x analytic + padding")
    return out


def cause(row: dict) -> str:
    """The node and the mechanism the row's own numbers name: where its DRAM misses, the bytes its steps exchange
    through DRAM; where its time misses, the time over the roofline as two factors, the serial bound over the
    roofline (its steps one after another, each at its own roofline) times the time over that bound, and the step
    furthest above its own roofline; then the step with most cycles and the step re-fetching most (if above 1 MB)."""
    parts = []
    if dram_ratio(row) > DRAM_TARGET and row.get("exchange_bytes"):
        parts.append(f"Its steps exchange {row['exchange_bytes'] / row['dram_bytes']:.3f}x the analytic bytes through "
                     f"DRAM ({(row['exchange_bytes'] - row['dram_bytes']) / 1e6:+,.1f} MB: what crosses Stream's "
                     "groups, which it runs each from and to DRAM, §2's spill terms) and the engine moves "
                     f"{row['engine_dram_bytes'] / row['exchange_bytes']:.3f}x that")  # fmt: skip
    if time_miss(row) is not None and row.get("lag_step") and row.get("lag_ratio"):
        parts.append(f"the step furthest above its own roofline: {step_name(row['lag_step'])} at "
                     f"{row['lag_ratio']:.3f}x its own, {row['lag_share']:.1%} of the cycles")  # fmt: skip
    parts.append(f"{step_name(row['hotspot'])}: {row['hotspot_cycle_share']:.0%} of cycles at "
                 f"{row['hotspot_mac_util']:.0%} of peak MAC/s")  # fmt: skip
    if row.get("excess_step") and (row.get("excess_bytes") or 0) > 1e6:
        parts.append(f"{step_name(row['excess_step'])} moves {row['excess_bytes'] / 1e6:,.1f} MB beyond its inputs "
                     "and outputs")  # fmt: skip
    if (why := planned_rereads(pd.Series(row))) != "":
        parts.append(why)
    return "; ".join(parts)


def serial_bound(model, row: dict) -> float:
    """The row's serial roofline (§8.0, `workloads.steps.serial_roofline_s`), as stored; computed for a row of an
    older code version that did not store it."""
    if row.get("serial_bound_s"):
        return row["serial_bound_s"]
    return serial_roofline_s(model, row["peak_flop_per_s"], row["dram_bytes_per_s"])


def exchange_bytes(model, row: dict) -> int:
    """Bytes the row's steps exchange through DRAM (`counts.step_counts`: what crosses each step's boundary, once
    per step; the serial bound's bytes)."""
    return sum(nbytes for _, nbytes in step_counts(model, steps(model, row["strategy"])).values())


def skipped(row: dict) -> str:
    strategies = json.loads(row["strategies"] or "{}")
    return ", ".join(sorted(k for k, v in strategies.items() if v.get("status") == "skipped"))


def per_strategy(row: dict) -> str:
    out = []
    for name, rec in json.loads(row["strategies"] or "{}").items():
        if rec.get("status") != "ok":
            out.append(f"{name}: {rec.get('status')} ({rec.get('note', '')[:100]})")
        else:
            out.append(f"{name}: {rec['latency_cycles']:,.0f} cyc ({rec['roofline_ratio']:.3f}x), DRAM "
                       f"{rec['dram_ratio']:.3f}, {rec['wall_s']:.1f} s")  # fmt: skip
    return "; ".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=Path("results/physics.sqlite"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="deepseek-v3")
    ap.add_argument("--contexts", type=int, nargs="*", default=[1024, 4096, 32768])
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 32])
    ap.add_argument("--schemes", nargs="*")
    ap.add_argument("--platforms", nargs="*", default=list(PRESETS))
    ap.add_argument("--off-grid", action="store_true", help="add the contexts and batches of OFF_GRID")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--report-only", action="store_true", help="print what the store holds; run nothing")
    args = ap.parse_args()
    if args.off_grid:
        args.contexts = sorted({*args.contexts, *OFF_GRID["contexts"]})
        args.batch = sorted({*args.batch, *OFF_GRID["batch"]})
    schemes = args.schemes or [s for s in registry.applicable(resolve_name_or_path(args.model)) if s not in BASELINES]
    engine = "stream" if args.strategy == "auto" else f"stream:{args.strategy}"
    block = {"models": [args.model], "schemes": schemes, "context": args.contexts, "batch": args.batch,
             "platforms": args.platforms, "engines": [engine]}  # fmt: skip
    spec = SweepSpec.from_dict({"sweeps": [block]}, source="grid")  # validated: one line per bad value
    order = {
        f: {v: i for i, v in enumerate(vals)}
        for f, vals in (
            ("platform", args.platforms),
            ("scheme", schemes),
            ("context", args.contexts),
            ("batch", args.batch),
        )
    }
    points = sorted(spec.points(), key=lambda p: tuple(order[f][getattr(p, f)] for f in order))  # table order
    if not args.report_only:
        s = run_sweep(points, args.db, workers=args.workers, timeout_s=args.timeout, progress=sys.stderr.isatty())
        print(f"{len(points)} points: {s['computed']} computed, {s['reused']} reused, {s['failed']} failed, "
              f"{s['failed_before']} failed earlier, {s['wall_s']:.0f} s\n")  # fmt: skip
    with ResultStore(args.db, readonly=True) as store:
        rows = [store.get(p.key()) for p in points]
        if args.report_only and None in rows:  # rows of another code version: matched by their fields, flagged
            fields = ("model", "scheme", "phase", "batch", "context", "platform", "bw_scale", "engine")
            table = store.table(include_failed=True)
            table = table[(table["part"] == "layer") & (table["queries"] == 1)]
            by_fields = {tuple(r[f] for f in fields): r for r in table.to_dict("records")}
            for i, p in enumerate(points):
                if rows[i] is None and (old := by_fields.get(tuple(getattr(p, f) for f in fields))) is not None:
                    rows[i] = {**old, "strategies": old["strategies"], "stale": True}
            if any(r and r.get("stale") for r in rows):
                print("Rows marked * come from another code version of the project (matched by their fields).\n")
    print("| platform | scheme | L | B | winner | x roofline | x serial roofline | DRAM / (analytic + padding) | "
          "bound | hotspot (share of cycles, MAC util) | skipped | wall (s) |")  # fmt: skip
    print("|---|---|---:|---:|---|---:|---:|---:|---|---|---|---:|")
    missed, failed = [], []
    for p, row in zip(points, rows, strict=True):
        where = f"| {p.platform} | {p.scheme} | {p.context} | {p.batch} |"
        if row is None:
            print(f"{where} not run | | | | | | | |")
            continue
        if row["status"] != "ok":
            failed.append(f"- {p.platform} {p.scheme} L={p.context} B={p.batch}: {row.get('error')}")
            print(f"{where} failed | | | | | | | |")
            continue
        model = build(p.workload())  # the layer's graph, once a row
        row["serial"] = row["latency_s"] / serial_bound(model, row)
        row["exchange_bytes"] = exchange_bytes(model, row)
        star = "*" if row.get("stale") else ""
        print(f"{where} {row['strategy']}{star} | {row['latency_s'] / row['roofline_s']:.3f} | {row['serial']:.3f} | "
              f"{dram_ratio(row):.3f} | {row['bound']} | {step_name(row['hotspot'])} "
              f"({row['hotspot_cycle_share']:.0%}, {row['hotspot_mac_util']:.0%}) | {skipped(row)} | "
              f"{row['engine_wall_s']:.1f} |")  # fmt: skip
        if found := misses(row):
            missed.append(f"- {p.platform} {p.scheme} L={p.context} B={p.batch}: {'; '.join(found)}. {cause(row)}")
    ok = [r for r in rows if r and r["status"] == "ok"]
    absent = sum(r is None for r in rows)
    print(f"\n{len(ok)} rows; {len(ok) - len(missed)} meet every target; {len(missed)} miss; {len(failed)} failed; "
          f"{absent} not run.")  # fmt: skip
    if missed:
        print("\nMisses (node and cause from the row):\n" + "\n".join(missed))
    if failed:
        print("\nFailed:\n" + "\n".join(failed))
    print("\nPer strategy (cycles, x roofline, engine DRAM / analytic, wall):")
    for p, row in zip(points, rows, strict=True):
        if row and row["status"] == "ok":
            print(f"- {p.platform} {p.scheme} L={p.context} B={p.batch}: {per_strategy(row)}")
    if args.json:
        args.json.write_text(json.dumps([r for r in rows if r], indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SpecError as exc:  # a bad model, scheme, platform or size: one line and exit code 2, as the CLI has it
        print(f"physics_report: {exc}", file=sys.stderr)
        sys.exit(2)
