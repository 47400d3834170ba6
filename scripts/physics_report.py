"""Heavy physics check of the Stream runner (issue 8: fused attention, split-KV, the strategy search).

For every platform, scheme, context L and batch B of DeepSeek-V3 decode: the winning strategy of the search (or the
one forced with --strategy), latency / roofline, engine DRAM / analytic bytes, energy, DRAM share and wall time; then
what every strategy of the search gave (cycles, x roofline, DRAM ratio, wall, or why it failed), and for
fused-attention its split-KV chunks and the combine's partials (MB they would be if written out, as a split kernel
writes them for its combine kernel; the fused group keeps them on-chip). `--bw-check` adds MHA decode with the DRAM
bandwidth doubled. Prints Markdown; `--json` writes the raw results too.

    python scripts/physics_report.py [--engine stream|zigzag] [--platforms h100-like h20-like]
        [--schemes mla-absorb mha mla-recompute] [--contexts 4096 32768] [--batch 1 32] [--strategy auto]
        [--json out.json] [--bw-check]
"""

import argparse
import json
import sys
from pathlib import Path

from stream_mla.engines import EngineError, bind, evaluate
from stream_mla.models import PRESETS as MODELS
from stream_mla.platforms import PRESETS
from stream_mla.workloads import build, make_spec
from stream_mla.workloads.split_kv import default_chunks, partial_elements

SCHEMES = ("mha", "mla-absorb", "mla-recompute")


def fmt_strategy(name: str, rec: dict) -> str:
    if rec.get("status") != "ok" or rec.get("latency_cycles") is None:
        return f"{name}: {rec.get('status')} ({rec.get('note', '')[:120]})"
    extra = f", {rec['note']}" if rec.get("note") else ""
    return (f"{name}: {rec['latency_cycles']:,.0f} cyc ({rec['roofline_ratio']:.3f}x), DRAM {rec['dram_ratio']:.3f}, "
            f"{rec['wall_s']:.1f} s{extra}")  # fmt: skip


def group_bounds(d: dict, hw) -> tuple[float, str]:
    """(the latency if every step Stream ran, one after another, took its own roofline on the traffic Stream moved
    for it, in cycles; the step furthest above its own bound, with its cycles and that ratio). Stream runs its fused
    groups strictly in turn (engines.md trap 9), so this, not the layer's roofline, is what a strategy can reach."""
    total, worst, label = 0.0, 0.0, ""
    for n in d["nodes"]:
        bound = max(n["macs"] / hw.peak_macs_per_cycle, n["dram_bytes"] * 8 / hw.dram_bits_per_cycle, 1.0)
        total += bound
        if n["cycles"] - bound > worst:
            worst, label = n["cycles"] - bound, f"{n['name'][:40]} {n['cycles']:,.0f} ({n['cycles'] / bound:.2f}x)"
    return total, label


def combine_mb(spec, plat) -> float:
    """MB of the split-KV partials at the platform's default C (activation precision)."""
    spec, _ = bind(spec, plat)
    c = default_chunks(spec, plat)
    if c == 1:
        return 0.0
    split = spec.model_copy(update={"kv_chunks": c})
    from stream_mla.models import BYTES_PER_ELEMENT

    return partial_elements(build(split)) * BYTES_PER_ELEMENT[spec.precisions["activations"]] / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="stream")
    ap.add_argument("--model", default="deepseek-v3")
    ap.add_argument("--contexts", type=int, nargs="*", default=[4096])
    ap.add_argument("--batch", type=int, nargs="*", default=[1])
    ap.add_argument("--schemes", nargs="*", default=list(SCHEMES))
    ap.add_argument("--platforms", nargs="*", default=list(PRESETS))
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--bw-check", action="store_true", help="also MHA decode with the DRAM bandwidth doubled")
    args = ap.parse_args()
    rows, details = [], []
    print("| platform | scheme | L | B | strategy | latency (ms) | roofline (ms) | ratio | bound | engine DRAM / "
          "analytic | combine partials (MB) | x group bound | step furthest above its bound | energy (mJ) | "
          "DRAM share | wall (s) |")  # fmt: skip
    print("|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|")
    for name in args.platforms:
        plat = PRESETS[name]
        for scheme in args.schemes:
            for context in args.contexts:
                for batch in args.batch:
                    spec = make_spec(model=MODELS[args.model], scheme=scheme, context=context, batch=batch)
                    where = f"| {name} | {scheme} | {context} | {batch} |"
                    try:
                        r = evaluate(spec, plat, args.engine, strategy=args.strategy, timeout_s=args.timeout)
                    except EngineError as exc:
                        print(f"{where} failed: {str(exc)[:300]} |")
                        sys.stdout.flush()
                        continue
                    d = r.to_dict()
                    partials = combine_mb(spec, plat) if args.engine == "stream" else 0.0
                    rows.append({"platform": name, "scheme": scheme, "context": context, "batch": batch, **d})
                    dram = d["engine_dram_bytes"] / d["dram_bytes"]
                    share = d["energy_breakdown_pj"]["dram"] / d["energy_pj"]
                    bound, step = group_bounds(d, bind(spec, plat)[1])
                    print(f"{where} {d['strategy']} | {d['latency_s'] * 1e3:.4g} | {d['roofline_bound_s'] * 1e3:.4g} | "
                          f"{d['roofline_ratio']:.3f} | {d['bound']} | {dram:.3f} | {partials:.3g} | "
                          f"{d['latency_cycles'] / bound:.3f} | {step} | {d['energy_pj'] / 1e9:.4g} | {share:.0%} | "
                          f"{d['engine_wall_s']:.1f} |")  # fmt: skip
                    details.append(f"- {name} {scheme} L={context} B={batch}: " + "; ".join(
                        fmt_strategy(k, v) for k, v in d.get("strategies", {}).items()))  # fmt: skip
                    sys.stdout.flush()
    if details:
        print("\nPer strategy (cycles, x roofline, engine DRAM / analytic, wall):")
        print("\n".join(details))
    if args.bw_check:
        print("\nDRAM bandwidth doubled, mha:")
        for name in args.platforms:
            plat = PRESETS[name]
            fast = plat.model_copy(update={"dram_gb_s": 2 * plat.dram_gb_s, "name": f"{name}-2xbw"})
            spec = make_spec(model=MODELS[args.model], scheme="mha", context=args.contexts[0])
            base = next((r for r in rows if r["platform"] == name and r["scheme"] == "mha"), None)
            if base is None:
                continue
            r = evaluate(spec, fast, args.engine, strategy=args.strategy, timeout_s=args.timeout)
            print(f"- {name}: {base['latency_s'] * 1e3:.4g} ms -> {r.latency_s * 1e3:.4g} ms "
                  f"(ratio {base['latency_s'] / r.latency_s:.3f})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
