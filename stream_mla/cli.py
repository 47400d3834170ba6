"""The `stream-mla` command line: export and count workloads, run the engines, describe and write platforms.

Every failure ends in one line on stderr and an exit code (README, "Errors and exit codes"): 2 for bad input
(the line names the flag or field and the allowed values), 1 for a fault (a full disk, an engine crash, an
unreachable scheduler), 130 for Ctrl-C, 143 for `kill`, 141 when the reader of stdout went away (`| head`).
STREAM_MLA_DEBUG=1 shows the traceback of an internal error (a bug) instead of its one line.
"""

import argparse
import contextlib
import errno
import json
import os
import re
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Annotated

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from stream_mla import __version__
from stream_mla.errors import (
    EXCERPT_CHARS,
    EXIT_BROKEN_PIPE,
    EXIT_FAULT,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    FaultError,
    SpecError,
    excerpt,
    first_error,
    one_line,
    short_path,
)
from stream_mla.io import FILE, FOLDER, STORE, Outputs, atomic, prepare_output
from stream_mla.models import BYTES_PER_ELEMENT, MAX_HEADS, Batch, Tokens, check_scale, resolve
from stream_mla.models import PRESETS as MODEL_PRESETS
from stream_mla.workloads import build, compute_precision, export, make_spec, reference_set, registry
from stream_mla.workloads.counts import count, count_file, roofline

PROG = "stream-mla"
# Random fp32 weights beyond this need --force: a V3 layer is 1.9 GB on disk and several times that in RAM.
MAX_NUMERIC_EXPORT_BYTES = 512 * 10**6
MAX_ONNX_BYTES = 2**31 - 2**24  # protobuf's 2 GiB limit on one ONNX file, less room for the graph itself


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
    p.add_argument("--kv-chunks", type=int, default=None, help="decode: split-KV chunks C (default 1: the plain graph)")
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
                     queries=args.queries, part=args.part, window=args.window, kv_chunks=args.kv_chunks,
                     kv_heads=args.kv_heads, precision=args.precision or default_precision,
                     kv_precision=args.kv_precision, act_precision=args.act_precision)  # fmt: skip


def workload(args: argparse.Namespace, default_precision: str | None = None):
    """workload_from_args, refused when its counts would not fit 64-bit integers (each flag is bounded on its
    own by Flags, their product here)."""
    spec = workload_from_args(args, default_precision)
    prefill = spec.phase == "prefill"
    tokens = spec.context if prefill else getattr(spec, "queries", 1)
    check_scale(spec.model, spec.batch, tokens, spec.context if prefill else spec.context + tokens)
    return spec


class Flags(BaseModel):
    """The numeric flags of every command, checked before any command runs. A field is a flag's dest, so an error
    names the flag; a flag a command lacks stays None. The workload itself is WorkloadSpec's to check, the sweep
    options SweepOptions' (both also called from Python)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    batch: Batch | None = None
    context: Tokens | None = None
    queries: Tokens | None = None
    window: Tokens | None = None
    kv_chunks: Tokens | None = None
    kv_heads: Annotated[int, Field(ge=1, le=MAX_HEADS)] | None = None
    clock_ghz: Annotated[float, Field(gt=0, le=100)] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**64)] | None = None


# An option given where it changes nothing is refused, not ignored: (dest, flag, whether it has an effect,
# why not). A rule holds for every command that has the option.
ONLY = "applies only with"
NEEDS = (
    ("clock_ghz", "--clock-ghz", lambda a: a.hardware is not None, f"{ONLY} --hardware (a platform has its own clock)"),
    ("seed", "--seed", lambda a: a.weights == "random", f"{ONLY} --weights random"),
    ("force", "--force", lambda a: a.weights == "random", f"{ONLY} --weights random"),
    ("out", "--out", lambda a: a.reference_set, f"{ONLY} --reference-set (one export is written to -o/--output)"),
    ("output", "-o/--output", lambda a: not a.reference_set, "has no effect with --reference-set (it writes to --out)"),
    ("weights", "--weights", lambda a: not a.reference_set, "has no effect with --reference-set (shapes mode)"),
    ("model", "--model", lambda a: a.hf_config is None, "has no effect with --hf-config (the config is the model)"),
    ("causal", "--causal", lambda a: a.platform is not None, f"{ONLY} --platform (it changes the roofline only)"),
    ("root", "--root", lambda a: a.write, f"{ONLY} --write"),
    ("workers", "--workers", lambda a: a.dask is None, "has no effect with --dask (the cluster has its own workers)"),
    ("timeout", "--timeout", lambda a: a.engine != "analytic", "has no effect with --engine analytic (no engine "
     "process: it computes in this one, at once)"),
    ("workdir", "--workdir", lambda a: a.engine != "analytic", "has no effect with --engine analytic (it writes no "
     "engine files)"),
)  # fmt: skip
# What a command without one of the options above is taken to have, for the rules.
ABSENT = {"hardware": None, "hf_config": None, "platform": None, "dask": None, "reference_set": False,
          "weights": None, "write": False, "engine": None}  # fmt: skip

# Where each command writes, checked by one policy before it runs (stream_mla.io): dest -> (flag, kind). The
# results store checks the rest itself when it opens (a read-only store is its own message).
OUTPUTS = {
    "export": {"output": ("-o/--output", FILE), "out": ("--out", FOLDER)},
    "mapping": {"output": ("-o/--output", FILE)},
    "results": {"output": ("-o/--output", FILE)},
    "figures": {"output": ("-o/--output", FOLDER)},
    "report": {"output": ("-o/--output", FILE)},
    "reproduce": {"output": ("-o/--output", FOLDER)},
    "explore": {"output": ("-o/--output", FOLDER)},
    "sweep": {"db": ("--db", STORE)},
}
# The files a command reads (dest -> flag): no output may overwrite one. A sweep's --db is both, by design.
INPUTS = {"db": "--db", "hf_config": "--hf-config", "platform": "--platform", "hardware": "--hardware",
          "file": "FILE", "spec": "SPEC", "figures": "--figures"}  # fmt: skip


def check_args(args: argparse.Namespace, sub: argparse.ArgumentParser) -> None:
    """Flag values in range, and no option that does nothing; `sub` is the command's parser (its defaults)."""
    try:
        Flags.model_validate(vars(args))
    except pydantic.ValidationError as exc:
        raise first_error(exc, as_flags=True) from None
    sweeping = {k: getattr(args, k) for k in ("workers", "timeout", "dask") if getattr(args, k, None) is not None}
    if "workers" in sweeping or "dask" in sweeping:  # sweep, reproduce: checked before their store is made
        from stream_mla.sweeps.runner import SweepOptions

        SweepOptions.check(**sweeping)
    present = argparse.Namespace(**{**ABSENT, **vars(args)})
    for dest, flag, applies, why in NEEDS:
        if hasattr(args, dest) and getattr(args, dest) != sub.get_default(dest) and not applies(present):
            raise SpecError(f"{flag}: {why}")


def cmd_export(args: argparse.Namespace) -> None:
    if args.reference_set:
        out = args.out or "onnx_models"
        files = reference_set.write(out, progress=not args.quiet)
        print(f"wrote {len(files)} files to {out}")
        return
    if args.weights not in ("none", "random"):
        raise SpecError(f"--weights: {excerpt(args.weights)} (allowed: none, random)")
    if args.weights == "random" and args.seed is None:
        raise SpecError("--seed: required with --weights random")
    spec = workload(args, default_precision="fp32" if args.weights == "random" else None)
    if args.weights == "random":
        _check_numeric_size(spec, args.force)
    out = prepare_output(args.output or f"{spec.slug}.onnx", "-o/--output")
    with atomic(out) as tmp:
        export(spec, tmp, seed=args.seed if args.weights == "random" else None)
    print(out)


def _check_numeric_size(spec, force: bool) -> None:
    """Refuse a numeric export beyond MAX_NUMERIC_EXPORT_BYTES unless forced, and beyond what ONNX holds."""
    nbytes = count(build(spec))["bytes"]["weights"]  # shapes mode: the parameters x 4 bytes (fp32), no data
    size = f"{spec.slug} would hold {nbytes / 1e6:,.0f} MB of fp32 weights"
    if nbytes > MAX_ONNX_BYTES:
        raise SpecError(f"--weights random: {size}, more than one ONNX file holds (2 GiB); export a smaller model")
    if nbytes > MAX_NUMERIC_EXPORT_BYTES and not force:
        raise SpecError(f"--weights random: {size} (limit {MAX_NUMERIC_EXPORT_BYTES / 1e6:.0f} MB without --force; "
                        "it needs several times that in RAM)")  # fmt: skip


def cmd_count(args: argparse.Namespace) -> None:
    path = Path(args.file)
    if path.is_dir():
        raise SpecError(f"FILE: {short_path(path)} is a folder, not an exported .onnx file")
    if not path.is_file():
        raise SpecError(f"FILE: no such file {short_path(path)}")
    try:
        c = count_file(path)
    except ValueError as exc:
        raise SpecError(one_line(str(exc))) from None
    except Exception as exc:  # a graph not written by `export` (hand-edited, or too large for shape inference)
        raise SpecError(f"FILE: cannot count {short_path(path)} ({exc.__class__.__name__}: "
                        f"{one_line(str(exc), EXCERPT_CHARS)})") from None  # fmt: skip
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
    print("DRAM: " + ", ".join(f"{k} {v:,} B" for k, v in b.items()))
    if "roofline" in c:
        r = c["roofline"]
        print(f"roofline on {r['platform']}: {r['bound_s'] * 1e3:.4g} ms, {r['bound']}-bound "
              f"(ridge {r['ridge_flop_per_byte']:.1f} FLOP/B)")  # fmt: skip
    for n in c["nodes"]:
        if n["macs"]:
            print(f"  {n['name']:<16} {n['op']:<8} {n['macs']:>16,} MACs")


def bound_workload(args: argparse.Namespace):
    """(workload, hardware): the workload as run on --platform (or a raw --hardware YAML) and what the engines see."""
    from stream_mla.engines import bind

    if (args.platform is None) == (args.hardware is None):
        raise SpecError("--platform / --hardware: give exactly one (a preset name or platform YAML, or a Stream YAML)")
    if args.hardware is not None:
        return workload(args), _raw_hardware(args.hardware, args.clock_ghz or 1.0)
    from stream_mla.platforms import load_platform

    return bind(workload(args), load_platform(args.platform))


def _raw_hardware(path: str, clock_ghz: float):
    """A raw Stream hardware YAML is free-form: whatever it lacks or has of the wrong type is the file's fault
    (Hardware.from_stream_yaml reads it without a schema), one line naming it."""
    from stream_mla.engines import Hardware

    try:
        return Hardware.from_stream_yaml(path, clock_ghz=clock_ghz)
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(f"--hardware: {short_path(path)} is not a Stream hardware YAML ({exc.__class__.__name__}: "
                        f"{one_line(str(exc), EXCERPT_CHARS)})") from None  # fmt: skip


def cmd_mapping(args: argparse.Namespace) -> None:
    import tempfile

    from stream_mla.engines.stream_mapping import MappingError, write_fixed_mapping

    spec, hw = bound_workload(args)
    out = prepare_output(args.output or f"{spec.slug}.{hw.name}.mapping.yaml", "-o/--output")
    with tempfile.TemporaryDirectory(prefix="stream-mla-mapping-") as tmp:
        onnx_path = export(spec, Path(tmp) / f"{spec.slug}.onnx")
        try:
            with atomic(out) as part:
                write_fixed_mapping(onnx_path, hw.stream, BYTES_PER_ELEMENT[spec.compute_precision], part)
        except MappingError as exc:
            raise SpecError(f"platform {hw.name}: {exc}") from None
    print(f"wrote {out} (for evaluate_mapping(..., mapping={str(out)!r}))")


def cmd_run(args: argparse.Namespace) -> None:
    from stream_mla.engines import evaluate

    spec, hw = bound_workload(args)
    result = evaluate(spec, hw, args.engine, timeout_s=args.timeout, workdir=args.workdir, strategy=args.strategy)
    doc = result.to_dict()
    for w in doc["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(doc, indent=1))
        return
    print(f"{spec.slug} on {hw.name} ({args.engine}, strategy {doc['strategy']}, {doc['engine_wall_s']:.1f} s)")
    print(
        f"latency {doc['latency_cycles']:,.0f} cycles = {doc['latency_s'] * 1e3:.4g} ms "
        f"({doc['roofline_ratio']:.2f}x the {doc['bound']}-bound roofline {doc['roofline_bound_s'] * 1e3:.4g} ms"
        + (f", {doc['serial_ratio']:.2f}x the serial roofline {doc['serial_bound_s'] * 1e3:.4g} ms)"
           if doc.get("serial_ratio") else ")")
    )  # fmt: skip
    print(f"energy {doc['energy_pj'] / 1e9:.4g} mJ: " + ", ".join(
        f"{k} {v / 1e9:.4g} mJ" for k, v in doc["energy_breakdown_pj"].items()))  # fmt: skip
    print(f"DRAM: engine {doc['engine_dram_bytes'] / 1e6:.4g} MB, analytic {doc['dram_bytes'] / 1e6:.4g} MB; "
          f"{doc['macs']:,} MACs")  # fmt: skip
    for name, rec in doc.get("strategies", {}).items():  # what each strategy of the search gave
        got = f"{rec['latency_cycles']:,.0f} cycles ({rec['roofline_ratio']:.3f}x)" if "latency_cycles" in rec else ""
        print(f"strategy {name}: {rec['status']} {got} {rec.get('note', '')}".rstrip())
    print(f"{'node':<28} {'op':<12} {'MACs':>14} {'cycles':>12} {'bound':>9} {'energy uJ':>11}")
    for n in doc["nodes"]:
        print(f"{n['name'][:28]:<28} {n['op'][:12]:<12} {n['macs']:>14,} {n['cycles']:>12,.0f} {n['bound']:>9} "
              f"{n['energy_pj'] / 1e6:>11.4g}")  # fmt: skip


# Units of the PlatformSpec fields, for `platforms NAME` (the JSON keeps the field names, whose docs give them).
FIELD_UNITS = {"clock_ghz": "GHz", "rows": "PEs", "cols": "PEs", "mac_pj": "pJ/MAC", "sram_bytes": "B",
               "sram_bits_per_cycle": "bit/cycle", "sram_pj_per_bit": "pJ/bit", "rf_weight_words": "words",
               "rf_output_words": "words", "rf_pj_per_bit": "pJ/bit", "vector_lanes": "lanes",
               "vector_sram_bytes": "B", "vector_pj_per_op": "pJ/op", "dram_gb_s": "GB/s",
               "dram_pj_per_bit": "pJ/bit", "link_bits_per_cycle": "bit/cycle", "link_pj_per_bit": "pJ/bit",
               "static_power_w": "W"}  # fmt: skip


def platform_record(p) -> dict:
    """A platform's fields and the numbers derived from them (what the engines see), JSON-ready."""
    derived = {"peak_flop_per_s": p.peak_flop_per_s, "peak_macs_per_cycle": p.peak_macs_per_cycle,
               "dram_bytes_per_s": p.dram_bytes_per_s, "dram_bits_per_cycle": p.dram_bits_per_cycle,
               "ridge_flop_per_byte": p.ridge_flop_per_byte, "total_sram_bytes": p.total_sram_bytes,
               "precisions": p.precisions}  # fmt: skip
    return {**p.model_dump(mode="json"), "derived": derived}


def _summary(p) -> str:
    return (f"{p.name:<14} {p.peak_flop_per_s / 1e12:8.1f} TFLOP/s {p.precision:<4} {p.dram_gb_s:7.0f} GB/s "
            f"ridge {p.ridge_flop_per_byte:6.1f} FLOP/B")  # fmt: skip


def _describe(p) -> list[str]:
    lines = [_summary(p)]
    for name, value in p.model_dump(exclude={"name"}).items():
        lines.append(f"  {name:<20} {value} {FIELD_UNITS.get(name, '')}".rstrip())
    rates = ", ".join(f"{k} x{v:g}" for k, v in p.precisions.items())
    lines += [f"  = peak {p.peak_macs_per_cycle:,} MAC/cycle = {p.peak_flop_per_s / 1e12:.4g} TFLOP/s ({rates})",
              f"  = DRAM {p.dram_bits_per_cycle:,} bit/cycle at {p.clock_ghz:g} GHz, ridge "
              f"{p.ridge_flop_per_byte:.4g} FLOP/B, SRAM {p.total_sram_bytes / 2**20:.4g} MiB in all"]  # fmt: skip
    return lines


def cmd_platforms(args: argparse.Namespace) -> None:
    from stream_mla.platforms import PRESETS, load_platform, write_platform

    chosen = [load_platform(name) for name in args.platforms] if args.platforms else list(PRESETS.values())
    if args.write:
        root = prepare_output(args.root or ".", "--root", FOLDER)
        files = [f for p in chosen for f in write_platform(p, root)]
        print(f"wrote {len(files)} files under {root}")
        return
    if args.json:
        print(json.dumps([platform_record(p) for p in chosen], indent=1))
        return
    for p in chosen:
        print("\n".join(_describe(p)) if args.platforms else _summary(p))


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it already names one or there is none worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


LONG_QUOTE = re.compile(rf"'([^']{{{EXCERPT_CHARS - 3}}})[^']{{4,}}'")


class Parser(argparse.ArgumentParser):
    """argparse with defaults in every --help and one-line usage errors (argparse's own prints the whole usage
    block first, a dozen lines for `run`). Subcommand parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        message = LONG_QUOTE.sub(r"'\1...'", message)  # argparse quotes the whole bad value
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    ap = Parser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write one attention layer as ONNX (or the reference set)")
    add_model_args(ex)
    ex.add_argument("-o", "--output", help="output .onnx (default <slug>.onnx)")
    ex.add_argument("--weights", default="none", help="none (shapes mode, data-less weights) or random")
    ex.add_argument("--seed", type=int, default=None, help="seed of the random canonical weights (0 or more)")
    ex.add_argument("--force", action="store_true",
                    help=f"write random weights beyond {MAX_NUMERIC_EXPORT_BYTES / 1e6:.0f} MB")  # fmt: skip
    ex.add_argument("--reference-set", action="store_true", help="regenerate the onnx_models/ grid")
    ex.add_argument("--out", help="folder for --reference-set (default onnx_models)")
    ex.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ex.set_defaults(func=cmd_export)
    co = sub.add_parser("count", help="MACs, DRAM bytes and roofline of an exported graph")
    co.add_argument("file", metavar="FILE", help="an .onnx file written by `stream-mla export`")
    co.add_argument("--json", action="store_true", help="print the counts as JSON")
    co.add_argument("--platform", help="preset name or platform YAML: adds the roofline bound")
    co.add_argument("--causal", action="store_true", help="roofline with causal prefill MACs")
    co.set_defaults(func=cmd_count)
    rn = sub.add_parser("run", help="latency and energy of one layer from a Stream or ZigZag run")
    add_model_args(rn)
    rn.add_argument("--platform", help="preset name or platform YAML")
    rn.add_argument("--hardware", help="a raw Stream hardware YAML instead of a platform")
    rn.add_argument("--clock-ghz", type=float, default=None, help="clock of a raw --hardware YAML (default 1.0)")
    rn.add_argument("--engine", default="stream", help="stream or zigzag")
    rn.add_argument("--strategy", default="auto",
                    help="Stream: auto (the fastest valid of keep-softmax, fixed-mapping, fused-attention and "
                    "default-fusion) or one of keep-softmax, per-layer, fixed-mapping, fused-attention, "
                    "default-fusion")  # fmt: skip
    rn.add_argument("--timeout", type=float, default=900.0, help="seconds before the engine process is killed")
    rn.add_argument("--workdir", help="keep the engine's files here (default: a temporary folder)")
    rn.add_argument("--json", action="store_true", help="print the result as JSON")
    rn.set_defaults(func=cmd_run)
    mp = sub.add_parser("mapping", help="write a fixed Stream mapping (tiled to fit) for a workload, to edit or reuse")
    add_model_args(mp)
    mp.add_argument("--platform", help="preset name or platform YAML")
    mp.add_argument("--hardware", help="a raw Stream hardware YAML instead of a platform")
    mp.add_argument("--clock-ghz", type=float, default=None, help=argparse.SUPPRESS)
    mp.add_argument("-o", "--output", help="output YAML (default <workload>.<platform>.mapping.yaml)")
    mp.set_defaults(func=cmd_mapping)
    pl = sub.add_parser("platforms", help="describe platform presets or your platform YAMLs, or write engine YAMLs")
    pl.add_argument("platforms", metavar="PLATFORM", nargs="*",
                    help="preset names or platform YAML files (default: every preset)")  # fmt: skip
    pl.add_argument("--json", action="store_true", help="print fields and derived numbers as JSON records")
    pl.add_argument("--write", action="store_true", help="write their Stream and ZigZag YAMLs under --root")
    pl.add_argument("--root", help="folder for accelerators/ and mappings/ (default: the current folder)")
    pl.set_defaults(func=cmd_platforms)
    from stream_mla import analysis_cli
    from stream_mla.sweeps import cli as sweep_cli

    sweep_cli.add_commands(sub)
    analysis_cli.add_commands(sub)
    ap.commands = sub.choices  # each command's parser, whose defaults tell a given option from an unset one
    return ap


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C (engine processes stopped)."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_unwinds():
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code; every failure is one line on stderr (see the module doc)."""
    outputs = Outputs()
    with _sigterm_unwinds():
        try:
            ap = parser()
            args = ap.parse_args(argv)
            check_args(args, ap.commands[args.command])
            inputs = {flag: getattr(args, dest) for dest, flag in INPUTS.items() if getattr(args, dest, None)}
            for dest, (flag, kind) in OUTPUTS.get(args.command, {}).items():
                if getattr(args, dest, None) != "-":  # `-o -`: stdout
                    mine = {f: v for f, v in inputs.items() if kind == FILE and f != flag}
                    outputs.prepare(getattr(args, dest, None), flag, kind, mine)
            args.func(args)
            sys.stdout.flush()  # a closed or full stdout fails here, inside the handlers below
            return 0
        except BaseException as exc:
            outputs.discard()  # a failed command leaves no folder it created
            return _failure(exc)


def _failure(exc: BaseException) -> int:
    """The exit code of a failed command, after its one line on stderr."""
    if isinstance(exc, SystemExit):  # argparse: --help, --version, or a usage error it printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else EXIT_USAGE
    if isinstance(exc, BrokenPipeError):  # the reader is gone: nobody to tell
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    if isinstance(exc, KeyboardInterrupt):
        word = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"{PROG}: {word}" + (f": {exc}" if str(exc) else ""), file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    if not isinstance(exc, Exception):
        raise exc
    code, message = _explain(exc)
    if code is None:  # a bug
        if os.environ.get("STREAM_MLA_DEBUG"):
            raise exc
        code = EXIT_FAULT
    _silence_stdout()
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)
    return code


def _explain(exc: Exception) -> tuple[int | None, str]:
    from stream_mla.engines.result import EngineError

    if isinstance(exc, SpecError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, FaultError | EngineError):
        return EXIT_FAULT, str(exc)
    if isinstance(exc, OSError):
        where = short_path(exc.filename) if exc.filename else "stdout"
        if exc.errno == errno.ENOSPC:  # an output file written through io.atomic leaves no partial file behind
            return EXIT_FAULT, f"{where}: no space left on device"
        return EXIT_FAULT, f"{where}: {exc.strerror or exc}"
    if isinstance(exc, sqlite3.Error):
        return EXIT_FAULT, f"results store: {exc}"
    if isinstance(exc, MemoryError):
        return EXIT_FAULT, "out of memory (try a smaller batch, context or model)"
    return None, (f"internal error: {exc.__class__.__name__}: {exc} (a bug; STREAM_MLA_DEBUG=1 shows the "
                  "traceback, please report it)")  # fmt: skip


def _silence_stdout() -> None:
    """Point the process's stdout at /dev/null, so the interpreter's final flush of what could not be written
    (a closed pipe, a full disk) does not print a second error. Only the real stdout: never pytest's capture."""
    if sys.stdout is not sys.__stdout__ or sys.stdout is None:
        return
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
