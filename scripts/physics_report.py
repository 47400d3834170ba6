"""Heavy physics check of the Stream runner (issue: platforms and engine runners).

For every platform preset and DeepSeek-V3 decode (B = 1, L = 4096) of mha, mla-absorb and mla-recompute:
latency vs the roofline bound, DRAM energy vs DRAM bits x pJ/bit, energy breakdown and engine wall time; then
MHA decode with the DRAM bandwidth doubled. Prints a Markdown table; `--json` writes the raw results too.

    python scripts/physics_report.py [--engine stream|zigzag] [--models deepseek-v3] [--json out.json]
"""

import argparse
import json
import sys
from pathlib import Path

from stream_mla.engines import EngineError, evaluate
from stream_mla.models import PRESETS as MODELS
from stream_mla.platforms import PRESETS
from stream_mla.workloads import make_spec

SCHEMES = ("mha", "mla-absorb", "mla-recompute")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="stream")
    ap.add_argument("--model", default="deepseek-v3")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--platforms", nargs="*", default=list(PRESETS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    print("| platform | scheme | latency (ms) | roofline (ms) | ratio | bound | energy (mJ) | DRAM share | "
          "DRAM pJ vs bits x pJ/bit | engine DRAM / analytic | wall (s) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for name in args.platforms:
        plat = PRESETS[name]
        for scheme in SCHEMES:
            spec = make_spec(model=MODELS[args.model], scheme=scheme, context=args.context)
            try:
                r = evaluate(spec, plat, args.engine)
            except EngineError as exc:
                print(f"| {name} | {scheme} | failed: {exc} |")
                continue
            d = r.to_dict()
            dram_check = d["energy_breakdown_pj"]["dram"] / (d["engine_dram_bytes"] * 8 * plat.dram_pj_per_bit)
            rows.append({"platform": name, "scheme": scheme, **d})
            print(f"| {name} | {scheme} | {d['latency_s'] * 1e3:.4g} | {d['roofline_bound_s'] * 1e3:.4g} | "
                  f"{d['roofline_ratio']:.3f} | {d['bound']} | {d['energy_pj'] / 1e9:.4g} | "
                  f"{d['energy_breakdown_pj']['dram'] / d['energy_pj']:.0%} | {dram_check:.4f} | "
                  f"{d['engine_dram_bytes'] / d['dram_bytes']:.3f} | {d['engine_wall_s']:.1f} |")  # fmt: skip
            sys.stdout.flush()
    print("\nDRAM bandwidth doubled, mha:")
    for name in args.platforms:
        plat = PRESETS[name]
        fast = plat.model_copy(update={"dram_gb_s": 2 * plat.dram_gb_s, "name": f"{name}-2xbw"})
        spec = make_spec(model=MODELS[args.model], scheme="mha", context=args.context)
        base = next(r for r in rows if r["platform"] == name and r["scheme"] == "mha")
        r = evaluate(spec, fast, args.engine)
        print(f"- {name}: {base['latency_s'] * 1e3:.4g} ms -> {r.latency_s * 1e3:.4g} ms "
              f"(ratio {base['latency_s'] / r.latency_s:.3f})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
