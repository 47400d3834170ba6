"""Reproduction timings: the full reproduction (default sweep, figures, claims, report) cold (fresh store) and
warm (same store again), the speed-up of 2 workers over 1 on a fixed set of engine points (fresh store each), and
the per-point wall of those engine points without the cost cache (ZigZag's per-layer costs and Stream's per-group
solves, the group memo), with it cold (empty) and warm (filled by the cold run; each run a fresh result store, so
every point is computed).

    python scripts/bench_sweep.py            # full: reproduction cold + warm (~8 min), 4 stream points x 1/2 workers
    python scripts/bench_sweep.py --quick    # analytic part of the default sweep, 2 stream points x 1/2 workers
    python scripts/bench_sweep.py --speedup-only
    python scripts/bench_sweep.py --cache-only   # per-point wall: cost cache off / cold / warm, 1 worker
    python scripts/bench_sweep.py --analytic     # 28,800 analytic points end to end (fast path), cold and warm

Unless --cache-only, the reproduction and the speed-up run with the cost cache off (STREAM_MLA_CACHE=off), so that
they measure the engines, not what an earlier run left in the cache.
"""

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from stream_mla.engines.cost_cache import CACHE_ENV
from stream_mla.reproduce import reproduce
from stream_mla.sweeps import fast
from stream_mla.sweeps.cli import summary_line
from stream_mla.sweeps.points import SweepPoint
from stream_mla.sweeps.runner import run_sweep
from stream_mla.sweeps.spec import _MEMO as spec_memo
from stream_mla.sweeps.spec import SweepSpec, default_sweep
from stream_mla.workloads import polynomial

ENGINE_POINTS = [  # balanced pairs (similar run times), so the 2-worker wall time is not one long straggler
    SweepPoint(model="deepseek-v3", scheme=s, context=256, platform=p, engine="stream")
    for s in ("mla-absorb", "mla-recompute")
    for p in ("h20-like", "h100-like")
]


PLATFORMS = ["edge-npu", "cloud-fusemax", "tpu-v5e-like", "h100-like", "h20-like"]
MODELS = ["deepseek-v3", "deepseek-v2-lite"]
ANALYTIC_SWEEP = {"sweeps": [  # 24,000 decode + 4,800 prefill points, 22 count groups (model x scheme x phase)
    {"name": "decode", "models": MODELS, "schemes": ["mha", "mla-naive", "mla-absorb", "mla-recompute", "mla-merged",
                                                     "mla-merged-per-step"],
     "batch": [1, 2, 4, 8, 16, 32, 64, 128], "context": [256 * 2**i for i in range(10)], "platforms": PLATFORMS,
     "bw_scale": [0.25, 0.5, 1, 2, 4]},
    {"name": "prefill", "models": MODELS, "schemes": ["mha", "mla-naive", "mla-absorb", "mla-recompute", "mla-merged"],
     "phases": ["prefill"], "batch": [1, 2, 4, 8], "context": [128 * 2**i for i in range(12)], "platforms": PLATFORMS,
     "bw_scale": [1, 2]},
]}  # fmt: skip


def analytic_throughput(tmp: Path, repeat: int) -> None:
    """Points/s of an analytic sweep end to end (`run_sweep`): spec load (validation and keys:
    `SweepSpec.keyed_points`), the checks, the store's cached keys, the claims, rows (count polynomials) and
    `put_many` (`fast.run_analytic_batch`, through the runner). Cold: a fresh store and
    empty caches (polynomials in memory and on disk, graph counts, the spec's keys, resolved groups), the first time
    in the process (its one-time costs included: first graphs, code digest) and again; warm: the same store again
    (every point cached); fresh store, warm caches: the computation and the writes alone; a new process: empty
    memory, the polynomials read from the disk cache an earlier sweep left (`fast._pieces`). Wall and CPU seconds
    are both printed: on a shared machine the wall time also counts the other jobs' turns."""

    def once(db: Path) -> tuple[float, float, float, int, int, int]:
        t, cpu = time.perf_counter(), time.process_time()
        spec = SweepSpec.from_dict(ANALYTIC_SWEEP)  # validated and keyed once per spec content
        t_spec = time.perf_counter() - t
        s = run_sweep(spec, db, progress=False)
        return time.perf_counter() - t, time.process_time() - cpu, t_spec, s["total"], s["computed"], s["failed"]

    def clear_memory() -> None:
        for clear in (polynomial.pieces.cache_clear, polynomial.direct.cache_clear, spec_memo.clear,
                      fast.SHARED.clear):  # fmt: skip
            clear()

    disk = tmp / "poly-cache"  # the derived polynomials on disk (fast._pieces), as a later process finds them
    cold = ("cold, first in the process", "cold caches")
    labels = (*cold, "warm", "fresh store, warm caches", "fresh store, a new process: polynomials on disk")
    for k, label in enumerate(labels):
        runs = []
        for i in range(1 if label in cold else repeat):
            if label in cold:  # nothing derived anywhere: an empty disk cache too
                os.environ[CACHE_ENV] = str(tmp / f"empty-{k}-{i}")
                clear_memory()
            elif label.endswith("on disk"):
                os.environ[CACHE_ENV] = str(disk)
                if not disk.exists():  # filled once, then every run starts with empty memory
                    once(tmp / "fill.sqlite")
                clear_memory()
            db = tmp / (f"analytic-{k}-{i}.sqlite" if label != "warm" else "analytic-1-0.sqlite")
            runs.append(once(db))
        wall, cpu, t_spec, n, computed, failed = min(runs)
        print(f"analytic {label}: {n} points ({computed} computed, {failed} failed) in {wall:.2f} s wall = "
              f"{n / wall:,.0f} points/s (spec load {t_spec:.2f} s); CPU {cpu:.2f} s = {n / cpu:,.0f} points/s "
              f"(runs: {', '.join(f'{r[0]:.2f}' for r in runs)} s)", flush=True)  # fmt: skip
    print(f"target: >= 20,000 points/s end to end (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def timed_reproduction(spec, out: Path, progress: bool) -> float:
    r = reproduce(out, spec, progress=progress)
    s, w = r["sweep"], r["walls"]
    print(f"  {summary_line(s)}; " + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in w.items()), flush=True)
    return w["total_s"]


def children_cpu_s() -> float:
    """CPU seconds of the finished engine processes (each sweep point runs in one): unlike wall time, not inflated
    by other jobs on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def per_point_walls(engine_points, tmp: Path, repeat: int) -> None:
    """Per-point wall (sweep wall / points, 1 worker, fresh result store) and engine-process CPU with the cost cache
    off, cold (empty) and warm (filled by the cold run)."""
    cache = tmp / "cost-cache"
    walls, cpus = {}, {}
    for label, setting in (("off", "off"), ("cold", str(cache)), ("warm", str(cache))):
        os.environ[CACHE_ENV] = setting  # read by every engine process the sweep starts
        runs = []
        for i in range(1 if label == "cold" else repeat):  # cold once: a second run would be warm
            t, cpu = time.perf_counter(), children_cpu_s()
            run_sweep(engine_points, tmp / f"cache-{label}-{i}.sqlite", workers=1, progress=False)
            runs.append(((time.perf_counter() - t) / len(engine_points), (children_cpu_s() - cpu) / len(engine_points)))
        walls[label], cpus[label] = min(w for w, _ in runs), min(c for _, c in runs)
        print(f"cost cache {label}: {walls[label]:.1f} s/point wall, {cpus[label]:.1f} s/point CPU ("
              + ", ".join(f"{w:.1f}/{c:.1f}" for w, c in runs) + ")", flush=True)  # fmt: skip
    print(f"{len(engine_points)} stream points, per point: cache off {walls['off']:.1f} s wall / {cpus['off']:.1f} s "
          f"CPU, cold {walls['cold']:.1f} / {cpus['cold']:.1f}, warm {walls['warm']:.1f} / {cpus['warm']:.1f} "
          f"(warm: {walls['off'] / walls['warm']:.2f}x wall, {cpus['off'] / cpus['warm']:.2f}x CPU)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="analytic points only for cold/warm; 2 engine points")
    ap.add_argument("--progress", action="store_true", help="show the sweep progress bars")
    ap.add_argument("--keep", metavar="DIR", help="write the reproduction here (must not exist) and keep it")
    ap.add_argument("--repeat", type=int, default=2, help="runs per worker count; the fastest counts (default 2)")
    ap.add_argument("--speedup-only", action="store_true", help="skip the reproduction, measure the speed-up only")
    ap.add_argument("--cache-only", action="store_true", help="per-point wall with the cost cache off/cold/warm only")
    ap.add_argument("--analytic", action="store_true", help="analytic points/s end to end (fast path) only")
    args = ap.parse_args()
    if args.analytic:
        with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
            analytic_throughput(Path(tmp), args.repeat)
        return
    spec = default_sweep()
    points = spec.points()
    print(f"default sweep: {len(points)} points ({sum(p.engine != 'analytic' for p in points)} engine)")
    if args.quick:
        spec = [p for p in points if p.engine == "analytic"]
    engine_points = ENGINE_POINTS[:2] if args.quick else ENGINE_POINTS
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        per_point_walls(engine_points, tmp, args.repeat)
        if args.cache_only:
            return
        os.environ[CACHE_ENV] = "off"
        if not args.speedup_only:
            label = "reproduction on the analytic part of the default sweep" if args.quick else "full reproduction"
            out = Path(args.keep) if args.keep else tmp / "repro"
            if out.exists():
                raise SystemExit(f"--keep: {out} exists; a cold run needs a fresh folder")
            print(f"{label}, cold (fresh store):")
            cold = timed_reproduction(spec, out, args.progress)
            print(f"{label}, warm (same store):")
            warm = timed_reproduction(spec, out, args.progress)
            print(f"cold {cold:.1f} s (target < 600), warm {warm:.2f} s (target < 15)")
        walls = {}
        for workers in (1, 2):
            runs = []
            for i in range(args.repeat):  # the fastest of a few runs: engine wall times vary by a few seconds
                t = time.perf_counter()
                run_sweep(engine_points, tmp / f"engine-{workers}-{i}.sqlite", workers=workers, progress=False)
                runs.append(time.perf_counter() - t)
            walls[workers] = min(runs)
            print(f"{len(engine_points)} stream points, {workers} worker(s), fresh store each run: "
                  + ", ".join(f"{r:.1f} s" for r in runs), flush=True)  # fmt: skip
    n = len(engine_points)
    print(f"{n} stream points: 1 worker {walls[1]:.1f} s ({walls[1] / n:.1f} s/point), 2 workers {walls[2]:.1f} s, "
          f"speed-up {walls[1] / walls[2]:.2f}x (target >= 1.8)")  # fmt: skip


if __name__ == "__main__":
    main()
