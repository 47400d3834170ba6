"""The `stream-mla` command line: export and count workloads, write platform YAMLs.

Bad input ends with one line on stderr naming the field, and exit code 2.
"""

import argparse
import json
import sys
from pathlib import Path

from stream_mla.errors import SpecError
from stream_mla.models import BYTES_PER_ELEMENT, resolve
from stream_mla.models import PRESETS as MODEL_PRESETS
from stream_mla.workloads import compute_precision, export, make_spec, reference_set, registry
from stream_mla.workloads.counts import count_file, roofline

PROG = "stream-mla"


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="deepseek-v3", help=f"preset: {', '.join(MODEL_PRESETS)} (default deepseek-v3)")
    p.add_argument("--hf-config", metavar="PATH", help="a Hugging Face config.json instead of a preset")
    p.add_argument(
        "--scheme", help=f"one of {registry.allowed()} (default: the model's own attention, mla-absorb for MLA models)"
    )
    p.add_argument("--phase", default="decode", help="decode (one new token, context L) or prefill (S tokens)")
    p.add_argument("--batch", type=int, default=1, help="B")
    p.add_argument("--context", type=int, default=4096, help="L for decode (cache entries), S for prefill")
    p.add_argument("--queries", type=int, default=1, help="decode: new tokens per sequence and step (s_q)")
    p.add_argument("--part", default="layer", help="layer (X to the output projection) or core (attention kernel)")
    p.add_argument("--window", type=int, default=None, help="sliding window W (default: the model's, else none)")
    kinds = ", ".join(BYTES_PER_ELEMENT)
    p.add_argument(
        "--precision",
        help=f"weights (and the default of the two below): {kinds}; default: the "
        "platform's native precision where there is one, else the model's (bf16 for the presets)",
    )
    p.add_argument("--kv-precision", help=f"KV cache: {kinds} (default: --precision)")
    p.add_argument("--act-precision", help=f"activations: {kinds} (default: --precision)")
    p.add_argument("--kv-heads", type=int, default=None, help="gqa: K/V heads (default: the model's)")


def workload_from_args(args: argparse.Namespace, default_precision: str | None = None):
    model = resolve(args.model, args.hf_config)
    scheme = args.scheme or registry.default_scheme(model)
    return make_spec(model=model, scheme=scheme, phase=args.phase, batch=args.batch, context=args.context,
                     queries=args.queries, part=args.part, window=args.window, kv_heads=args.kv_heads,
                     precision=args.precision or default_precision, kv_precision=args.kv_precision,
                     act_precision=args.act_precision)  # fmt: skip


def cmd_export(args: argparse.Namespace) -> None:
    if args.reference_set:
        files = reference_set.write(args.out or "onnx_models", progress=not args.quiet)
        print(f"wrote {len(files)} files to {args.out or 'onnx_models'}")
        return
    if args.weights not in ("none", "random"):
        raise SpecError(f"--weights: {args.weights!r} (allowed: none, random)")
    if args.weights == "random" and args.seed is None:
        raise SpecError("--seed: required with --weights random")
    spec = workload_from_args(args, default_precision="fp32" if args.weights == "random" else None)
    out = Path(args.output or f"{spec.slug}.onnx")
    export(spec, out, seed=args.seed if args.weights == "random" else None)
    print(out)


def cmd_count(args: argparse.Namespace) -> None:
    path = Path(args.file)
    if not path.is_file():
        raise SpecError(f"FILE: no such file {path}")
    try:
        c = count_file(path)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if args.platform:
        from stream_mla.platforms import load_platform

        plat = load_platform(args.platform).at_precision(compute_precision(c["precision"]))
        r = roofline(c, plat.peak_mac_per_s, plat.dram_bytes_per_s, causal=args.causal)
        c["roofline"] = {"platform": plat.name, "ridge_flop_per_byte": plat.ridge_flop_per_byte, "bound": r.bound,
                         "compute_s": r.compute_s, "memory_s": r.memory_s, "bound_s": r.bound_s}  # fmt: skip
    if args.json:
        print(json.dumps(c, indent=1))
        return
    b = c["bytes"]
    print(f"{c['graph']}: {c['macs']:,} MACs ({c['macs_causal']:,} causal), OI {c['operational_intensity']:.2f} FLOP/B")
    print("DRAM bytes: " + ", ".join(f"{k} {v:,}" for k, v in b.items()))
    if "roofline" in c:
        r = c["roofline"]
        print(f"roofline on {r['platform']}: {r['bound_s'] * 1e3:.4g} ms, {r['bound']}-bound")
    for n in c["nodes"]:
        if n["macs"]:
            print(f"  {n['name']:<16} {n['op']:<8} {n['macs']:>16,}")


def bound_workload(args: argparse.Namespace):
    """(workload, hardware): the workload as run on --platform (or a raw --hardware YAML) and what the engines see."""
    from stream_mla.engines import Hardware, bind

    if (args.platform is None) == (args.hardware is None):
        raise SpecError("--platform / --hardware: give exactly one (a preset name or platform YAML, or a Stream YAML)")
    if args.hardware is not None:
        return workload_from_args(args), Hardware.from_stream_yaml(args.hardware, clock_ghz=args.clock_ghz)
    from stream_mla.platforms import load_platform

    return bind(workload_from_args(args), load_platform(args.platform))


def cmd_mapping(args: argparse.Namespace) -> None:
    import tempfile

    from stream_mla.engines.stream_mapping import MappingError, write_fixed_mapping

    spec, hw = bound_workload(args)
    out = Path(args.output or f"{spec.slug}.{hw.name}.mapping.yaml")
    with tempfile.TemporaryDirectory(prefix="stream-mla-mapping-") as tmp:
        onnx_path = export(spec, Path(tmp) / f"{spec.slug}.onnx")
        try:
            write_fixed_mapping(onnx_path, hw.stream, BYTES_PER_ELEMENT[spec.compute_precision], out)
        except MappingError as exc:
            raise SpecError(f"platform {hw.name}: {exc}") from None
    print(f"wrote {out} (for evaluate_mapping(..., mapping={str(out)!r}))")


def cmd_run(args: argparse.Namespace) -> None:
    from stream_mla.engines import EngineError, evaluate

    spec, hw = bound_workload(args)
    try:
        result = evaluate(spec, hw, args.engine, timeout_s=args.timeout, workdir=args.workdir, strategy=args.strategy)
    except EngineError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    doc = result.to_dict()
    if args.json:
        print(json.dumps(doc, indent=1))
        return
    print(f"{spec.slug} on {hw.name} ({args.engine}, strategy {doc['strategy']}, {doc['engine_wall_s']:.1f} s)")
    print(
        f"latency {doc['latency_cycles']:,.0f} cycles = {doc['latency_s'] * 1e3:.4g} ms "
        f"({doc['roofline_ratio']:.2f}x the {doc['bound']}-bound roofline {doc['roofline_bound_s'] * 1e3:.4g} ms)"
    )
    print(f"energy {doc['energy_pj'] / 1e9:.4g} mJ: " + ", ".join(
        f"{k} {v / 1e9:.4g}" for k, v in doc["energy_breakdown_pj"].items()))  # fmt: skip
    print(f"DRAM: engine {doc['engine_dram_bytes'] / 1e6:.4g} MB, analytic {doc['dram_bytes'] / 1e6:.4g} MB; "
          f"{doc['macs']:,} MACs")  # fmt: skip
    print(f"{'node':<28} {'op':<12} {'MACs':>14} {'cycles':>12} {'bound':>9} {'energy uJ':>11}")
    for n in doc["nodes"]:
        print(f"{n['name'][:28]:<28} {n['op'][:12]:<12} {n['macs']:>14,} {n['cycles']:>12,.0f} {n['bound']:>9} "
              f"{n['energy_pj'] / 1e6:>11.4g}")  # fmt: skip
    for w in doc["warnings"]:
        print(f"warning: {w}")


def cmd_platforms(args: argparse.Namespace) -> None:
    from stream_mla.platforms import PRESETS, write_all

    if args.write:
        files = write_all(Path(args.root))
        print(f"wrote {len(files)} files under {args.root}")
        return
    for p in PRESETS.values():
        print(f"{p.name:<14} {p.peak_flop_per_s / 1e12:8.1f} TFLOP/s {p.dram_gb_s:7.0f} GB/s "
              f"ridge {p.ridge_flop_per_byte:6.1f} FLOP/B")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write one attention layer as ONNX (or the reference set)")
    add_model_args(ex)
    ex.add_argument("-o", "--output", help="output .onnx (default <slug>.onnx)")
    ex.add_argument("--weights", default="none", help="none (shapes mode, data-less weights) or random")
    ex.add_argument("--seed", type=int, default=None, help="seed of the random canonical weights")
    ex.add_argument("--reference-set", action="store_true", help="regenerate the onnx_models/ grid")
    ex.add_argument("--out", help="folder for --reference-set (default onnx_models)")
    ex.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ex.set_defaults(func=cmd_export)
    co = sub.add_parser("count", help="MACs, DRAM bytes and roofline of an exported graph")
    co.add_argument("file", metavar="FILE")
    co.add_argument("--json", action="store_true")
    co.add_argument("--platform", help="preset name or platform YAML: adds the roofline bound")
    co.add_argument("--causal", action="store_true", help="roofline with causal prefill MACs")
    co.set_defaults(func=cmd_count)
    rn = sub.add_parser("run", help="latency and energy of one layer from a Stream or ZigZag run")
    add_model_args(rn)
    rn.add_argument("--platform", help="preset name or platform YAML")
    rn.add_argument("--hardware", help="a raw Stream hardware YAML instead of a platform")
    rn.add_argument("--clock-ghz", type=float, default=1.0, help="clock of a raw --hardware YAML (default 1.0)")
    rn.add_argument("--engine", default="stream", help="stream or zigzag")
    rn.add_argument("--strategy", default="auto",
                    help="Stream: auto (keep-softmax, per-layer, then fixed-mapping) or one of them")  # fmt: skip
    rn.add_argument("--timeout", type=float, default=900.0, help="seconds before the engine process is killed")
    rn.add_argument("--workdir", help="keep the engine's files here (default: a temporary folder)")
    rn.add_argument("--json", action="store_true")
    rn.set_defaults(func=cmd_run)
    mp = sub.add_parser("mapping", help="write a fixed Stream mapping (tiled to fit) for a workload, to edit or reuse")
    add_model_args(mp)
    mp.add_argument("--platform", help="preset name or platform YAML")
    mp.add_argument("--hardware", help="a raw Stream hardware YAML instead of a platform")
    mp.add_argument("--clock-ghz", type=float, default=1.0, help=argparse.SUPPRESS)
    mp.add_argument("-o", "--output", help="output YAML (default <workload>.<platform>.mapping.yaml)")
    mp.set_defaults(func=cmd_mapping)
    pl = sub.add_parser("platforms", help="list platform presets, or write their engine YAMLs")
    pl.add_argument("--write", action="store_true", help="regenerate accelerators/ and mappings/")
    pl.add_argument("--root", default=".", help="folder holding accelerators/ and mappings/")
    pl.set_defaults(func=cmd_platforms)
    from stream_mla import analysis_cli
    from stream_mla.sweeps import cli as sweep_cli

    sweep_cli.add_commands(sub)
    analysis_cli.add_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except SpecError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
