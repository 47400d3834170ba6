"""Run a sweep into a results store: skip cached points, run the rest in parallel, write each row as it finishes.

Local runs use threads: an engine point spends its time in its own spawned engine process (see
`stream_mla.engines.evaluate`), so `workers` threads keep `workers` engine processes busy; analytic points
(~5 ms each) run on one extra thread. With `dask_address`, every point is one task on an existing
dask.distributed cluster and the rows are written here, in the parent, as the futures complete. Dask's
worker processes are daemonic and may not start children, so an engine point on such a worker runs in a plain
subprocess (`python -m stream_mla.sweeps.runner`) instead.
"""

import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

from stream_mla.errors import SpecError
from stream_mla.sweeps.points import ROW_COLUMNS, SweepPoint, engine_version, run_point
from stream_mla.sweeps.spec import SweepSpec
from stream_mla.sweeps.store import ResultStore


def one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {msg}" if msg else exc.__class__.__name__


def _execute(point: dict, timeout_s: float) -> tuple[str, dict | str]:
    """("ok", row) or ("failed", one-line error); never raises for a failing point."""
    try:
        pt = SweepPoint.model_validate(point)
        if pt.engine != "analytic" and multiprocessing.current_process().daemon:
            return _execute_in_subprocess(point, timeout_s)
        return "ok", run_point(pt, timeout_s=timeout_s)
    except Exception as exc:  # SpecError, EngineError, or a bug: recorded with the point, the sweep goes on
        return "failed", one_line(exc)


def _execute_in_subprocess(point: dict, timeout_s: float) -> tuple[str, dict | str]:
    cmd = [sys.executable, "-m", "stream_mla.sweeps.runner", json.dumps(point), str(timeout_s)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 120)
    except subprocess.TimeoutExpired:
        return "failed", f"point subprocess timed out after {timeout_s + 120:.0f} s"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return "failed", f"point subprocess failed: {tail}"
    status, payload = json.loads(lines[-1])
    return status, payload


def failed_row(point: SweepPoint, key: str, error: str) -> dict:
    row = dict.fromkeys(ROW_COLUMNS)
    row.update(point.model_dump(exclude={"kv_heads"}), key=key, status="failed", error=error,
               kv_heads=point.kv_heads, engine_version=engine_version(point.engine))  # fmt: skip
    return row


def _order(items: list[tuple[str, SweepPoint]]) -> list[tuple[str, SweepPoint]]:
    """Engine points first, the slowest (largest) first, so the pool stays busy to the end."""
    return sorted(items, key=lambda kp: (kp[1].engine == "analytic", -kp[1].batch * kp[1].context))


def _kill_new_children(before: set[int]) -> None:
    """Kill the child processes started since `before` (the engine processes of the running points)."""
    for child in multiprocessing.active_children():
        if child.pid not in before:
            child.kill()


def run_sweep(
    spec_or_points: SweepSpec | Iterable[SweepPoint],
    store: ResultStore | str | Path,
    workers: int = 2,
    dask_address: str | None = None,
    timeout_s: float = 900.0,
    retry_failed: bool = False,
    progress: bool = True,
) -> dict:
    """Compute every point not yet in the store; returns {total, cached, done, failed, wall_s}.

    Cached points are those stored with status ok, or failed unless retry_failed. A failing point is stored
    with status "failed" and its one-line error. KeyboardInterrupt propagates after the running points are
    stopped; every row finished so far is already committed.
    """
    if workers < 1:
        raise SpecError(f"--workers: must be at least 1 (got {workers})")
    t0 = time.perf_counter()
    own_store = not isinstance(store, ResultStore)
    store = ResultStore(store) if own_store else store
    try:
        points = spec_or_points.points() if isinstance(spec_or_points, SweepSpec) else list(spec_or_points)
        keyed = {}
        for pt in points:
            keyed.setdefault(pt.key(), pt)
        have = store.keys("ok") | (set() if retry_failed else store.keys("failed"))
        todo = _order([(k, p) for k, p in keyed.items() if k not in have])
        stats = {"total": len(keyed), "cached": len(keyed) - len(todo), "done": 0, "failed": 0}
        bar = tqdm(total=len(keyed), initial=stats["cached"], unit="pt", disable=not progress, smoothing=0.05,
                   dynamic_ncols=True)  # fmt: skip

        def postfix() -> dict:
            return {k: stats[k] for k in ("done", "cached", "failed")}

        def record(key: str, pt: SweepPoint, status: str, payload: dict | str) -> None:
            if status == "ok":
                store.put(payload)
                stats["done"] += 1
            else:
                store.put(failed_row(pt, key, payload))
                stats["failed"] += 1
            bar.update(1)
            bar.set_postfix(postfix(), refresh=False)

        bar.set_postfix(postfix())
        try:
            if dask_address:
                _run_dask(todo, dask_address, timeout_s, record)
            else:
                _run_local(todo, workers, timeout_s, record)
        finally:
            bar.close()
        return {**stats, "wall_s": time.perf_counter() - t0}
    finally:
        if own_store:
            store.close()


def _run_local(todo, workers: int, timeout_s: float, record) -> None:
    children_before = {c.pid for c in multiprocessing.active_children()}
    engine_pool = ThreadPoolExecutor(workers, thread_name_prefix="sweep-engine")
    analytic_pool = ThreadPoolExecutor(1, thread_name_prefix="sweep-analytic")
    pending: dict[Future, tuple[str, SweepPoint]] = {}
    try:
        for key, pt in todo:
            pool = analytic_pool if pt.engine == "analytic" else engine_pool
            pending[pool.submit(_execute, pt.model_dump(), timeout_s)] = (key, pt)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                key, pt = pending.pop(fut)
                record(key, pt, *fut.result())
    except BaseException:
        for pool in (engine_pool, analytic_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        _kill_new_children(children_before)  # the running engine points end at once (their results are dropped)
        raise
    finally:
        engine_pool.shutdown(wait=True)
        analytic_pool.shutdown(wait=True)


def _run_dask(todo, address: str, timeout_s: float, record) -> None:
    from distributed import Client, as_completed

    try:
        client = Client(address, timeout=30)
    except (OSError, TimeoutError) as exc:
        raise SpecError(f"--dask: cannot connect to scheduler {address!r}: {one_line(exc)}") from None
    futures = {}
    try:
        for key, pt in todo:
            futures[client.submit(_execute, pt.model_dump(), timeout_s, pure=False)] = (key, pt)
        for fut in as_completed(list(futures)):
            key, pt = futures.pop(fut)
            try:
                status, payload = fut.result()
            except Exception as exc:  # the task itself was lost (worker died, cancelled, ...)
                status, payload = "failed", f"dask: {one_line(exc)}"
            record(key, pt, status, payload)
    except BaseException:
        client.cancel(list(futures), force=True)
        raise
    finally:
        client.close()


if __name__ == "__main__":  # one point in a fresh process (used from daemonic dask workers)
    print(json.dumps(_execute(json.loads(sys.argv[1]), float(sys.argv[2]))))
