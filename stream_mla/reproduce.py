"""The full reproduction in one call: default sweep -> figures -> claims -> HTML report, all under one folder."""

import json
import time
from collections.abc import Iterable
from pathlib import Path

from stream_mla.claims import evaluate_claims, format_claims, to_json
from stream_mla.figures import make_figures
from stream_mla.report import write_report
from stream_mla.sweeps.points import SweepPoint
from stream_mla.sweeps.runner import run_sweep
from stream_mla.sweeps.spec import SweepSpec, default_sweep
from stream_mla.sweeps.store import ResultStore


def reproduce(out_dir: str | Path = "results", spec: SweepSpec | Iterable[SweepPoint] | None = None, workers: int = 2,
              progress: bool = True) -> dict:  # fmt: skip
    """Run `spec` (default: the embedded reproduction sweep) into `out_dir/results.sqlite`, then write
    `figures/`, `claims.txt` (summary and every check), `claims.json` (the check records) and `report.html` there.
    Returns the sweep summary (`run_sweep`'s: computed, reused, failed, failed_before), the claim results and
    the wall time of each step."""
    out = Path(out_dir)
    walls = {}
    t = time.perf_counter()
    with ResultStore(out / "results.sqlite") as store:
        stats = run_sweep(default_sweep() if spec is None else spec, store, workers=workers, progress=progress)
        walls["sweep_s"] = time.perf_counter() - t
        everything = store.table(include_failed=True)
    ok = everything[everything["status"] == "ok"].reset_index(drop=True)
    t = time.perf_counter()
    figures = make_figures(ok, out / "figures")
    walls["figures_s"] = time.perf_counter() - t
    t = time.perf_counter()
    results = evaluate_claims(ok)
    (out / "claims.txt").write_text(format_claims(results))
    (out / "claims.json").write_text(json.dumps(to_json(results), indent=2, ensure_ascii=False) + "\n")
    walls["claims_s"] = time.perf_counter() - t
    t = time.perf_counter()
    report = write_report(everything, out / "figures", out / "report.html")
    walls["report_s"] = time.perf_counter() - t
    walls["total_s"] = sum(walls.values())
    return {"sweep": stats, "claims": results, "figures": figures, "report": report, "walls": walls}
