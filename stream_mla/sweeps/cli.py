"""`stream-mla sweep` and `stream-mla results`: run a sweep spec into a results store, export the tidy table."""

import argparse
import sys
from pathlib import Path

from stream_mla.errors import SpecError
from stream_mla.sweeps.store import DEFAULT_DB


def cmd_sweep(args: argparse.Namespace) -> None:
    from stream_mla.sweeps.runner import run_sweep
    from stream_mla.sweeps.spec import default_sweep, load_sweep
    from stream_mla.sweeps.store import ResultStore

    if args.workers < 1:
        raise SpecError(f"--workers: must be at least 1 (got {args.workers})")
    if args.timeout <= 0:
        raise SpecError(f"--timeout: must be positive (got {args.timeout})")
    if args.spec is not None and not Path(args.spec).is_file():
        raise SpecError(f"SPEC: no such file {args.spec}")
    spec = default_sweep() if args.spec is None else load_sweep(args.spec)
    with ResultStore(args.db) as store:
        try:
            s = run_sweep(spec, store, workers=args.workers, dask_address=args.dask, timeout_s=args.timeout,
                          retry_failed=args.retry_failed, progress=not args.quiet)  # fmt: skip
        except KeyboardInterrupt:
            print(f"interrupted: {len(store)} finished points kept in {args.db}; run again to resume",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(130) from None
    print(f"{s['total']} points: {s['done']} computed, {s['cached']} cached, {s['failed']} failed "
          f"in {s['wall_s']:.1f} s -> {args.db}")  # fmt: skip
    if s["failed"]:
        print(f"{s['failed']} points failed (recorded; see `results --include-failed`, rerun with --retry-failed)",
              file=sys.stderr)  # fmt: skip


def cmd_results(args: argparse.Namespace) -> None:
    from stream_mla.sweeps.store import FORMATS, ResultStore

    if args.format not in FORMATS:
        raise SpecError(f"--format: {args.format!r} (allowed: {', '.join(FORMATS)})")
    if not Path(args.db).is_file():
        raise SpecError(f"--db: no such results store {args.db} (run `stream-mla sweep` first)")
    if args.format == "parquet" and args.output in (None, "-"):
        raise SpecError("-o/--output: parquet needs an output file")
    with ResultStore(args.db) as store:
        out = sys.stdout if args.output in (None, "-") else args.output
        store.export(out, args.format, include_failed=args.include_failed)


def add_commands(subparsers) -> None:
    """Add `sweep` and `results` to the `stream-mla` subcommands."""
    sw = subparsers.add_parser("sweep", help="run a sweep spec (default: the reproduction grid) into a results store")
    sw.add_argument("spec", metavar="SPEC", nargs="?", help="sweep spec YAML (default: the embedded default sweep)")
    sw.add_argument("--db", default=DEFAULT_DB, help=f"SQLite results store (default {DEFAULT_DB})")
    sw.add_argument("--workers", type=int, default=2, help="engine points run at once (default 2)")
    sw.add_argument("--dask", metavar="ADDRESS", help="run on this dask.distributed scheduler instead")
    sw.add_argument("--timeout", type=float, default=900.0, help="seconds before an engine point is killed")
    sw.add_argument("--retry-failed", action="store_true", help="run again the points recorded as failed")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)
    rs = subparsers.add_parser("results", help="export the results store as a tidy CSV or Parquet table")
    rs.add_argument("--db", default=DEFAULT_DB, help=f"SQLite results store (default {DEFAULT_DB})")
    rs.add_argument("--format", default="csv", help="csv (default) or parquet")
    rs.add_argument("-o", "--output", help="output file (default: stdout, csv only)")
    rs.add_argument("--include-failed", action="store_true", help="also the failed points, with their errors")
    rs.set_defaults(func=cmd_results)
