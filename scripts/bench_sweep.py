"""Reproduction timings: the full reproduction (default sweep, figures, claims, report) cold (fresh store) and
warm (same store again), the speed-up of 2 workers over 1 on a fixed set of engine points (fresh store each), and
the per-point wall of those engine points without the ZigZag cost cache, with it cold (empty) and warm (filled by
the cold run; each run a fresh result store, so every point is computed).

    python scripts/bench_sweep.py            # full: reproduction cold + warm (~8 min), 4 stream points x 1/2 workers
    python scripts/bench_sweep.py --quick    # analytic part of the default sweep, 2 stream points x 1/2 workers
    python scripts/bench_sweep.py --speedup-only
    python scripts/bench_sweep.py --cache-only   # per-point wall: cost cache off / cold / warm, 1 worker

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
from stream_mla.sweeps.points import SweepPoint
from stream_mla.sweeps.runner import run_sweep
from stream_mla.sweeps.spec import default_sweep

ENGINE_POINTS = [  # balanced pairs (similar run times), so the 2-worker wall time is not one long straggler
    SweepPoint(model="deepseek-v3", scheme=s, context=256, platform=p, engine="stream")
    for s in ("mla-absorb", "mla-recompute")
    for p in ("h20-like", "h100-like")
]


def timed_reproduction(spec, out: Path, progress: bool) -> float:
    r = reproduce(out, spec, progress=progress)
    s, w = r["sweep"], r["walls"]
    print(f"  {s['total']} points: {s['done']} computed, {s['cached']} cached, {s['failed']} failed; "
          + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in w.items()), flush=True)  # fmt: skip
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
    args = ap.parse_args()
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
