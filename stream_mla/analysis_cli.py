"""CLI commands over the results store (`figures`, `claims`, `report`, `reproduce`) and `advise` (added to the main
parser)."""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from stream_mla.errors import SpecError, short_path
from stream_mla.sweeps.store import DEFAULT_DB, ResultStore

RESULTS = Path(DEFAULT_DB).parent  # what `make figures` (`reproduce -o results`) writes: store, figures, report
FIGURES = str(RESULTS / "figures")
REPORT = str(RESULTS / "report.html")
EXPLORE = str(RESULTS / "explore")
CLAIMS_EXIT = """exit status: 0 when no analytic verdict fails (engine verdicts are findings to explain, §8), 1 when one
does (with --strict: when any verdict fails), 2 for bad input (no store at --db). NO DATA (rows absent) is no
failure."""
FILE_SUFFIXES = (".png", ".svg", ".pdf", ".csv", ".html", ".htm", ".json", ".parquet")  # not a folder's name
ADVISE_EXIT = "exit status: 0; 1 when a --engine stream run fails; 2 for bad input (one line on stderr)"


def load_table(db: str | Path, include_failed: bool = False) -> pd.DataFrame:
    path = Path(db)
    if not path.is_file():
        raise SpecError(f"--db: no results store at {path} (run `stream-mla sweep` first)")
    with ResultStore(path) as store:
        return store.table(include_failed=include_failed)


def cmd_figures(args: argparse.Namespace) -> None:
    import logging

    from stream_mla.figures import make_figures

    if Path(args.output).suffix.lower() in FILE_SUFFIXES:
        raise SpecError(f"-o/--output: figures writes a folder of PNG, SVG and CSV files; give a folder name, not "
                        f"{short_path(args.output)}")  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = make_figures(load_table(args.db), Path(args.output))
    print(f"wrote {len(files)} files under {args.output}")


def cmd_claims(args: argparse.Namespace) -> None:
    from stream_mla.claims import evaluate_claims, exit_code, format_claims, to_json

    results = evaluate_claims(load_table(args.db))
    if args.json:
        print(json.dumps(to_json(results), indent=2, ensure_ascii=False))
    else:
        print(format_claims(results), end="")
    code = exit_code(results, strict=args.strict)
    if code:
        raise SystemExit(code)


def cmd_advise(args: argparse.Namespace) -> None:
    import sys

    from stream_mla.advise import advise, format_advice
    from stream_mla.engines import EngineError

    fields = {k: getattr(args, k) for k in ("phase", "batch", "context", "precision", "kv_precision", "act_precision")}
    try:
        advice = advise(args.model, args.platform, engine=args.engine, kv_heads=args.kv_heads, **fields)
    except EngineError as exc:  # the input was fine, the engine run was not (as `stream-mla run`)
        print(f"stream-mla advise: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.json:
        print(json.dumps([asdict(a) for a in advice], indent=2, ensure_ascii=False))
    else:
        print(format_advice(advice), end="")


def cmd_report(args: argparse.Namespace) -> None:
    from stream_mla.report import write_report

    if Path(args.output).suffix.lower() not in (".html", ".htm"):
        raise SpecError(f"-o/--output: report writes HTML; give a .html file name, not {short_path(args.output)}")
    out = write_report(load_table(args.db, include_failed=True), Path(args.figures), Path(args.output))
    print(f"wrote {out}")


def cmd_reproduce(args: argparse.Namespace) -> None:
    from stream_mla.claims import format_claims, summary_table
    from stream_mla.reproduce import reproduce
    from stream_mla.sweeps.cli import summary_line
    from stream_mla.sweeps.spec import load_sweep

    spec = None if args.spec is None else load_sweep(args.spec)
    r = reproduce(args.output, spec, workers=args.workers, progress=not args.quiet)
    s, w = r["sweep"], r["walls"]
    print(format_claims(summary_table(r["claims"])), end="")  # the summary; claims.txt has every check
    print(f"{summary_line(s)}; {len(r['figures'])} figure files, report {r['report']}; {w['total_s']:.1f} s")


def cmd_explore(args: argparse.Namespace) -> None:
    import sys

    from stream_mla.explore import EXAMPLE, load_explore, run_explore, summary
    from stream_mla.io import FOLDER, Outputs

    def progress(text: str) -> None:  # one line, rewritten in place, on a terminal only
        if sys.stderr.isatty():
            print(f"\rexplore: {text}"[:100].ljust(100), end="", file=sys.stderr, flush=True)

    ex = load_explore(args.spec or EXAMPLE)  # the spec first: a bad one leaves no folder behind
    outputs = Outputs()  # the output policy of the other commands (stream_mla.io)
    out = outputs.prepare(args.output, "-o/--output", FOLDER)
    try:
        result = run_explore(ex, out, progress=progress)
    except BaseException:
        outputs.discard()
        raise
    if sys.stderr.isatty():
        print("\r" + " " * 100 + "\r", end="", file=sys.stderr, flush=True)
    print(summary(result, args.output))


def _add_advise(subparsers) -> None:
    from stream_mla.models import BYTES_PER_ELEMENT
    from stream_mla.models import PRESETS as MODEL_PRESETS
    from stream_mla.platforms import PRESETS as PLATFORM_PRESETS

    kinds = ", ".join(BYTES_PER_ELEMENT)
    ad = subparsers.add_parser("advise", help="rank the attention schemes for a model on a platform, with reasons",
                               epilog=ADVISE_EXIT)  # fmt: skip
    ad.add_argument("--model", required=True, help=f"preset ({', '.join(MODEL_PRESETS)}) or a config.json path")
    ad.add_argument("--platform", required=True, help=f"preset ({', '.join(PLATFORM_PRESETS)}) or a platform YAML")
    ad.add_argument("--phase", default="decode", help="decode (one new token, context L) or prefill (S tokens); "
                    "default decode")  # fmt: skip
    ad.add_argument("--batch", type=int, default=1, help="B, sequences (default 1)")
    ad.add_argument("--context", type=int, default=4096, help="L for decode, S for prefill, tokens (default 4096)")
    ad.add_argument("--precision", help=f"weights: {kinds} (default: the platform's native precision)")
    ad.add_argument("--kv-precision", help=f"KV cache: {kinds} (default: --precision)")
    ad.add_argument("--act-precision", help=f"activations: {kinds} (default: --precision)")
    ad.add_argument("--kv-heads", type=int, help="gqa's K/V heads; where the model has n_kv = h, gqa is ranked only "
                    "when this is given (default: the model's)")  # fmt: skip
    ad.add_argument("--engine", default="analytic", help="analytic (default), or stream: the analytic ranking, then "
                    "the top two run through Stream to confirm it (slow)")  # fmt: skip
    ad.add_argument("--json", action="store_true", help="print the ranking as a list of records")
    ad.set_defaults(func=cmd_advise)


def add_commands(subparsers) -> None:
    """Add `figures`, `claims`, `report`, `reproduce`, `advise`, `explore` and `validate` to an argparse sub-parser
    collection."""
    fi = subparsers.add_parser("figures", help="figures F1-F6 (PNG, SVG and CSV) from the results store")
    fi.add_argument("--db", default=DEFAULT_DB, help=f"results store (default {DEFAULT_DB})")
    fi.add_argument("-o", "--output", default=FIGURES, help=f"output folder (default {FIGURES}, where `report` looks)")
    fi.set_defaults(func=cmd_figures)
    cl = subparsers.add_parser("claims", help="test the claims C1-C4 on the results store", epilog=CLAIMS_EXIT)
    cl.add_argument("--db", default=DEFAULT_DB, help=f"results store (default {DEFAULT_DB})")
    cl.add_argument("--json", action="store_true", help="print every check as a JSON record")
    cl.add_argument("--strict", action="store_true", help="exit 1 when any verdict fails, engine ones included")
    cl.set_defaults(func=cmd_claims)
    rp = subparsers.add_parser("report", help="one self-contained HTML report (answers, figures, evidence)")
    rp.add_argument("--db", default=DEFAULT_DB, help=f"results store (default {DEFAULT_DB})")
    rp.add_argument("--figures", default=FIGURES, help=f"folder of the figures to embed (default {FIGURES})")
    rp.add_argument("-o", "--output", default=REPORT, help=f"output HTML (default {REPORT})")
    rp.set_defaults(func=cmd_report)
    rr = subparsers.add_parser("reproduce", help="the full reproduction: default sweep, figures, claims, report")
    rr.add_argument("spec", metavar="SPEC", nargs="?", help="sweep spec YAML (default: the embedded default sweep)")
    rr.add_argument("-o", "--output", default=str(RESULTS), help=f"folder for the store, figures and report "
                    f"(default {RESULTS})")  # fmt: skip
    rr.add_argument("--workers", type=int, default=2, help="engine points run at once (default 2)")
    rr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rr.set_defaults(func=cmd_reproduce)
    _add_advise(subparsers)
    ex = subparsers.add_parser("explore", help="co-design: winner maps and latency-energy fronts over platform "
                               "parameters x workloads (analytic, 1e5-1e6 points)")  # fmt: skip
    ex.add_argument("spec", metavar="SPEC", nargs="?", help="explore spec YAML (default: the shipped example, "
                    "stream_mla/data/explore-example.yaml)")  # fmt: skip
    ex.add_argument("-o", "--output", default=EXPLORE, help=f"output folder (default {EXPLORE})")
    ex.set_defaults(func=cmd_explore)
    va = subparsers.add_parser("validate", help="published GPU kernel measurements against the model's predictions")
    va.add_argument("--engine", action="append", choices=("analytic", "stream"), help="engine(s) predicting each "
                    "measurement; repeat for both (default analytic; stream runs each point, minutes)")  # fmt: skip
    va.add_argument("--data", default=None, help="a measurements YAML (default: the shipped table)")
    va.add_argument("--json", action="store_true", help="print the rows as JSON records")
    va.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> None:
    import json

    from stream_mla.validate import DATA, as_json, format_table, validate

    rows = validate(tuple(args.engine or ("analytic",)), args.data or DATA)
    print(json.dumps(as_json(rows), indent=1) if args.json else format_table(rows))
