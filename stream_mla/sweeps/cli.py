"""`stream-mla sweep` and `stream-mla results`: run a sweep spec into a results store, export the tidy table."""

import argparse
import sys
from pathlib import Path

from stream_mla.errors import SpecError, excerpt, short_path
from stream_mla.sweeps.store import DEFAULT_DB


def cmd_sweep(args: argparse.Namespace) -> None:
    from stream_mla.sweeps.runner import SweepOptions, run_sweep
    from stream_mla.sweeps.spec import default_sweep, load_sweep
    from stream_mla.sweeps.store import ResultStore

    workers = 2 if args.workers is None else args.workers
    opts = SweepOptions.check(workers=workers, timeout=args.timeout, dask=args.dask)  # before the spec is read
    if args.spec is not None and not Path(args.spec).is_file():
        raise SpecError(f"SPEC: no such file {short_path(args.spec)}")
    spec = default_sweep() if args.spec is None else load_sweep(args.spec)
    try:
        s = run_sweep(spec, args.db, workers=opts.workers, dask_address=opts.dask, timeout_s=opts.timeout,
                      retry_failed=args.retry_failed, progress=not args.quiet)  # fmt: skip
    except KeyboardInterrupt as exc:
        if Path(args.db).is_file():
            with ResultStore(args.db, readonly=True) as store:
                exc.args = (f"{len(store)} finished points kept in {args.db}; run again to resume",)
        raise
    print(summary_line(s) + f" in {s['wall_s']:.1f} s -> {args.db}")
    if s["failed"]:
        print(f"warning: {s['failed']} points failed (recorded; see `results --include-failed`, rerun with "
              "--retry-failed)", file=sys.stderr)  # fmt: skip


def summary_line(s: dict) -> str:
    """`N points: C computed, R reused, F failed[, E failed earlier, not retried (use --retry-failed)]` of a
    `run_sweep` summary; reused counts the ok rows found in the store (a concurrent sweep's included)."""
    line = f"{s['total']} points: {s['computed']} computed, {s['reused']} reused, {s['failed']} failed"
    if s["failed_before"]:
        line += f", {s['failed_before']} failed earlier, not retried (use --retry-failed)"
    return line


SUFFIX_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def output_format(given: str | None, output: str | None) -> str:
    """The export format: --format, else the one -o's suffix names, else csv; a --format that contradicts the
    suffix (`--format csv -o t.parquet`) is refused rather than writing one format under the other's name."""
    from stream_mla.sweeps.store import FORMATS

    if given is not None and given not in FORMATS:
        raise SpecError(f"--format: {excerpt(given)} (allowed: {', '.join(FORMATS)})")
    suffix = Path(output).suffix.lower() if output not in (None, "-") else ""
    implied = SUFFIX_FORMATS.get(suffix)
    if given is not None and implied not in (None, given):
        raise SpecError(f"--format {given} contradicts -o {short_path(output)} (a {implied} name): give a .{given} "
                        "file or leave --format out")  # fmt: skip
    return given or implied or "csv"


def cmd_results(args: argparse.Namespace) -> None:
    from stream_mla.io import atomic
    from stream_mla.sweeps.store import ResultStore

    args.format = output_format(args.format, args.output)
    to_stdout = args.output in (None, "-")
    if args.format == "parquet" and to_stdout:
        raise SpecError("-o/--output: parquet needs an output file")
    if not Path(args.db).is_file():
        raise SpecError(f"--db: no such results store {short_path(args.db)} (run `stream-mla sweep` first)")
    with ResultStore(args.db, readonly=True) as store:
        if to_stdout:
            store.export(sys.stdout, args.format, include_failed=args.include_failed)
            return
        with atomic(args.output) as tmp:
            store.export(tmp, args.format, include_failed=args.include_failed)


def add_commands(subparsers) -> None:
    """Add `sweep` and `results` to the `stream-mla` subcommands."""
    sw = subparsers.add_parser("sweep", help="run a sweep spec (default: the reproduction grid) into a results store")
    sw.add_argument("spec", metavar="SPEC", nargs="?", help="sweep spec YAML (default: the embedded default sweep)")
    sw.add_argument("--db", default=DEFAULT_DB, help="SQLite results store (created with its folders)")
    sw.add_argument("--workers", type=int, default=None, help="engine points run at once, locally (default 2)")
    sw.add_argument("--dask", metavar="ADDRESS", help="run on this dask.distributed scheduler, [tcp://]host:port")
    sw.add_argument("--timeout", type=float, default=900.0, help="seconds before an engine point is killed")
    sw.add_argument("--retry-failed", action="store_true", help="run again the points recorded as failed")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)
    rs = subparsers.add_parser("results", help="export the results store as a tidy CSV or Parquet table")
    rs.add_argument("--db", default=DEFAULT_DB, help="SQLite results store (opened read-only)")
    rs.add_argument("--format", help="csv or parquet (default: the one -o's suffix names, .csv or .parquet, else csv)")
    rs.add_argument("-o", "--output", help="output file, or - for stdout (default: stdout, csv only)")
    rs.add_argument("--include-failed", action="store_true", help="also the failed points, with their errors")
    rs.set_defaults(func=cmd_results)
