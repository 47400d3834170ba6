"""Sweep timings: the reproduction grid cold (fresh store) and warm (same store again), and the speed-up of
2 workers over 1 on a fixed set of engine points (fresh store each).

    python scripts/bench_sweep.py            # full: default sweep cold + warm (~10 min), 4 stream points x 1/2 workers
    python scripts/bench_sweep.py --quick    # analytic part of the default sweep, 2 stream points x 1/2 workers
"""

import argparse
import tempfile
import time
from pathlib import Path

from stream_mla.sweeps.points import SweepPoint
from stream_mla.sweeps.runner import run_sweep
from stream_mla.sweeps.spec import default_sweep

ENGINE_POINTS = [  # balanced pairs (similar run times), so the 2-worker wall time is not one long straggler
    SweepPoint(model="deepseek-v3", scheme=s, context=256, platform=p, engine="stream")
    for s in ("mla-absorb", "mla-recompute")
    for p in ("h20-like", "h100-like")
]


def timed_sweep(points, db: Path, workers: int = 2, progress: bool = False) -> dict:
    s = run_sweep(points, db, workers=workers, progress=progress)
    print(f"  {s['total']} points: {s['done']} computed, {s['cached']} cached, {s['failed']} failed, "
          f"{s['wall_s']:.2f} s", flush=True)  # fmt: skip
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="analytic points only for cold/warm; 2 engine points")
    ap.add_argument("--progress", action="store_true", help="show the sweep progress bars")
    args = ap.parse_args()
    t = time.perf_counter()
    points = default_sweep().points()
    print(f"default sweep: {len(points)} points ({sum(p.engine != 'analytic' for p in points)} engine), "
          f"spec load + keys {time.perf_counter() - t:.2f} s")  # fmt: skip
    if args.quick:
        points = [p for p in points if p.engine == "analytic"]
    engine_points = ENGINE_POINTS[:2] if args.quick else ENGINE_POINTS
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        label = "analytic part of the default sweep" if args.quick else "default sweep (reproduction)"
        print(f"{label}, cold (fresh store):")
        cold = timed_sweep(points, tmp / "default.sqlite", progress=args.progress)
        n_analytic = sum(p.engine == "analytic" for p in points)
        if args.quick:
            print(f"  analytic: {n_analytic / cold['wall_s']:.0f} points/s")
        print(f"{label}, warm (same store):")
        warm = timed_sweep(points, tmp / "default.sqlite", progress=args.progress)
        walls = {}
        for workers in (1, 2):
            print(f"{len(engine_points)} stream points, {workers} worker(s), fresh store:")
            walls[workers] = timed_sweep(engine_points, tmp / f"engine-{workers}.sqlite", workers=workers)["wall_s"]
    print(f"\ncold {cold['wall_s']:.1f} s, warm {warm['wall_s']:.2f} s; {len(engine_points)} stream points: "
          f"1 worker {walls[1]:.1f} s ({walls[1] / len(engine_points):.1f} s/point), 2 workers {walls[2]:.1f} s, "
          f"speed-up {walls[1] / walls[2]:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
