"""CLI commands over the results store: `figures`, `claims` and `report` (added to the main parser)."""

import argparse
import json
from pathlib import Path

import pandas as pd

from stream_mla.errors import SpecError
from stream_mla.sweeps.store import DEFAULT_DB, ResultStore


def load_table(db: str | Path, include_failed: bool = False) -> pd.DataFrame:
    path = Path(db)
    if not path.is_file():
        raise SpecError(f"--db: no results store at {path} (run `stream-mla sweep` first)")
    with ResultStore(path) as store:
        return store.table(include_failed=include_failed)


def cmd_figures(args: argparse.Namespace) -> None:
    import logging

    from stream_mla.figures import make_figures

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = make_figures(load_table(args.db), Path(args.output))
    print(f"wrote {len(files)} files under {args.output}")


def cmd_claims(args: argparse.Namespace) -> None:
    from stream_mla.claims import claims, format_claims

    table = claims(load_table(args.db))
    if args.json:
        print(json.dumps(table.to_dict(orient="records"), indent=2, ensure_ascii=False))
    else:
        print(format_claims(table), end="")


def cmd_report(args: argparse.Namespace) -> None:
    from stream_mla.report import write_report

    out = write_report(load_table(args.db, include_failed=True), Path(args.figures), Path(args.output))
    print(f"wrote {out}")


def cmd_reproduce(args: argparse.Namespace) -> None:
    from stream_mla.claims import format_claims
    from stream_mla.reproduce import reproduce
    from stream_mla.sweeps.spec import load_sweep

    spec = None if args.spec is None else load_sweep(args.spec)
    r = reproduce(args.output, spec, workers=args.workers, progress=not args.quiet)
    s, w = r["sweep"], r["walls"]
    print(format_claims(r["claims"]), end="")
    print(f"{s['total']} points ({s['done']} computed, {s['cached']} cached, {s['failed']} failed), "
          f"{len(r['figures'])} figure files, report {r['report']}; {w['total_s']:.1f} s")  # fmt: skip


def add_commands(subparsers) -> None:
    """Add `figures`, `claims` and `report` to an argparse sub-parser collection."""
    fi = subparsers.add_parser("figures", help="figures F1-F6 (PNG, SVG and CSV) from the results store")
    fi.add_argument("--db", default=DEFAULT_DB, help=f"results store (default {DEFAULT_DB})")
    fi.add_argument("-o", "--output", default="figures", help="output folder (default figures/)")
    fi.set_defaults(func=cmd_figures)
    cl = subparsers.add_parser("claims", help="test the claims C1-C4 on the results store")
    cl.add_argument("--db", default=DEFAULT_DB, help=f"results store (default {DEFAULT_DB})")
    cl.add_argument("--json", action="store_true", help="print the table as JSON records")
    cl.set_defaults(func=cmd_claims)
    rp = subparsers.add_parser("report", help="one self-contained HTML report (claims, figures, platforms)")
    rp.add_argument("--db", default=DEFAULT_DB, help=f"results store (default {DEFAULT_DB})")
    rp.add_argument("--figures", default="figures", help="folder of the figures to embed (default figures/)")
    rp.add_argument("-o", "--output", default="report.html", help="output HTML (default report.html)")
    rp.set_defaults(func=cmd_report)
    rr = subparsers.add_parser("reproduce", help="the full reproduction: default sweep, figures, claims, report")
    rr.add_argument("spec", metavar="SPEC", nargs="?", help="sweep spec YAML (default: the embedded default sweep)")
    rr.add_argument(
        "-o", "--output", default="results", help="folder for the store, figures and report (default results/)"
    )
    rr.add_argument("--workers", type=int, default=2, help="engine points run at once (default 2)")
    rr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rr.set_defaults(func=cmd_reproduce)
