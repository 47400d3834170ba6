"""Run a sweep into a results store: skip stored points, run the rest in parallel, write each row as it finishes.

Local runs use threads: an engine point spends its time in its own engine process (see
`stream_mla.engines.evaluate`), so `workers` threads keep `workers` engine processes busy; analytic points
(~5 ms each) run on one extra thread. With `dask_address`, every point is one task on an existing
dask.distributed cluster and the rows are written here, in the parent, as the futures complete. Dask's
worker processes are daemonic and may not start children, so an engine point on such a worker runs in a plain
subprocess (`python -m stream_mla.sweeps.runner`) instead.

Everything that can be checked before a point runs is checked before the store is opened (`SweepOptions`,
`check_points`), so a bad sweep writes nothing: sizes within the documented maxima, platform names unique,
no option that changes nothing, a reachable scheduler.

Sweeps sharing a store: a sweep claims its points (`ResultStore.claim`, one transaction) just before it runs
them, all it can get at once, locally or on dask (the parent claims, the workers never see the store). The
points another live sweep holds it leaves alone: after its own, it polls the store every POLL_S until each of
them is written (counted as reused) or its claim goes stale (its sweep was killed: the point is taken over and
run here). So no point runs in two live sweeps, and a killed sweep never blocks another. Every exit (an error,
Ctrl-C) releases the claims not yet settled by a written row.

The summary counts each point once: computed (written ok by this run), reused (ok in the store already, or
written by a concurrent sweep), failed (failed in this run) and failed_before (recorded as failed by an earlier
or concurrent run and not retried: --retry-failed runs them). Progress: a tqdm bar when stderr is a terminal,
else one line to stderr at most every LOG_EVERY_S and one at the end, so a log file gets no bar redraws.
"""

import json
import logging
import multiprocessing
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Annotated

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from tqdm import tqdm

from stream_mla.engines import live_engine_processes, registry
from stream_mla.errors import FaultError, SpecError, excerpt, first_error, short_path
from stream_mla.models import Batch, Tokens, check_scale, resolve_name_or_path
from stream_mla.platforms import PlatformSpec, load_platform
from stream_mla.sweeps.fast import fast_keys, run_analytic_batch
from stream_mla.sweeps.points import ROW_COLUMNS, SweepPoint, engine_version, run_point
from stream_mla.sweeps.spec import SweepSpec
from stream_mla.sweeps.store import ResultStore, unstorable

MAX_WORKERS = 1024
POLL_S = 2.0  # how often a sweep waiting for points claimed by another sweep looks at the store
LOG_EVERY_S = 10.0  # a progress line at most this often when stderr is not a terminal
DASK_CONNECT_TIMEOUT_S = 10.0  # a scheduler answers in milliseconds; an unroutable address would hang for minutes
# [tcp|tls|ucx|ws|wss://]host:port, host a name, an IPv4 address or a bracketed IPv6 address
DASK_ADDRESS = re.compile(
    r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-]*):(\d{1,5})$"
)


def _workers(n: int) -> int:
    if not 1 <= n <= MAX_WORKERS:
        raise ValueError(f"must be at least 1 and at most {MAX_WORKERS} (got {n})")
    return n


def _dask_address(address: str) -> str:
    m = DASK_ADDRESS.match(address)
    if not m or not 0 < int(m.group(1)) < 65536:
        raise ValueError(f"expected a scheduler address [tcp://]host:port, e.g. tcp://127.0.0.1:8786 (got "
                         f"{excerpt(address)})")  # fmt: skip
    return address


class SweepOptions(BaseModel):
    """How a sweep runs; the field names are the CLI flags (an error names --workers, --timeout or --dask)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    workers: Annotated[int, AfterValidator(_workers)] = 2
    timeout: Annotated[float, Field(gt=0)] = 900.0
    dask: Annotated[str, AfterValidator(_dask_address)] | None = None

    @classmethod
    def check(cls, **fields) -> "SweepOptions":
        try:
            return cls(**fields)
        except pydantic.ValidationError as exc:
            raise first_error(exc, as_flags=True) from None


class _Sizes(BaseModel):
    """A block's (or a point's) sizes within the documented maxima (stream_mla.models.MAX_*)."""

    model_config = ConfigDict(extra="ignore")

    batch: list[Batch]
    context: list[Tokens]
    queries: list[Tokens] = [1]
    window: list[Tokens | None] = [None]


SIZES = tuple(_Sizes.model_fields)


def one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {msg}" if msg else exc.__class__.__name__


def _execute(point: dict, timeout_s: float) -> tuple[str, dict | str]:
    """("ok", row) or ("failed", one-line error); never raises for a failing point."""
    try:
        pt = SweepPoint.model_validate(point)
        if registry.get(pt.engine).runs_in_process and multiprocessing.current_process().daemon:
            return _execute_in_subprocess(point, timeout_s)
        row = run_point(pt, timeout_s=timeout_s)
    except Exception as exc:  # SpecError, EngineError, or a bug: recorded with the point, the sweep goes on
        return "failed", one_line(exc)
    problem = unstorable(row)  # e.g. counts beyond 64 bits: a failed point, not a crash of the whole sweep
    return ("failed", f"SpecError: {problem}") if problem else ("ok", row)


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
    return sorted(items, key=lambda kp: (not registry.get(kp[1].engine).runs_in_process, -kp[1].batch * kp[1].context))


def _kill_new_engines(before: set) -> None:
    """Kill the engine processes started since `before` (those of the running points)."""
    for proc in live_engine_processes() - before:
        proc.kill()


def check_points(spec_or_points: SweepSpec | Iterable[SweepPoint]) -> list[SweepPoint]:
    """The sweep's points, after the checks that need no engine: sizes, no option that does nothing, and
    platforms that are distinct and valid at every bandwidth scale. Raises one SpecError line."""
    if isinstance(spec_or_points, SweepSpec):
        for i, block in enumerate(spec_or_points.sweeps):
            _check_block(block, f"sweep spec: sweeps.{i}.")
        points = spec_or_points.points()
    else:
        points = list(spec_or_points)
        for n, pt in enumerate(points):
            _check_sizes({k: [getattr(pt, k)] for k in SIZES if hasattr(pt, k)}, f"point {n}: ")
    _check_scales(points)
    _check_platforms(points)
    return points


def _check_scales(points: list[SweepPoint]) -> None:
    """Each size within its maximum, their product too (stream_mla.models.check_scale)."""
    for model, batch, phase, context, queries in dict.fromkeys(
        (pt.model, pt.batch, pt.phase, pt.context, getattr(pt, "queries", 1)) for pt in points
    ):
        keys, tokens = (context, context) if phase == "prefill" else (context + queries, queries)
        check_scale(resolve_name_or_path(model), batch, tokens, keys, where="sweep: ")


def _check_sizes(sizes: dict, prefix: str) -> None:
    try:
        _Sizes.model_validate(sizes)
    except pydantic.ValidationError as exc:
        raise first_error(exc, prefix=prefix) from None


def _check_block(block, prefix: str) -> None:
    _check_sizes({k: getattr(block, k) for k in SIZES if hasattr(block, k)}, prefix)
    if any(k is not None for k in block.kv_heads) and "gqa" not in block.schemes:
        raise SpecError(f"{prefix}kv_heads: applies to scheme gqa only, and this block has none (schemes: "
                        f"{', '.join(block.schemes)})")  # fmt: skip
    if getattr(block, "queries", [1]) != [1] and "decode" not in block.phases:
        raise SpecError(f"{prefix}queries: applies to decode only, and this block has phases {block.phases}")


def _check_platforms(points: list[SweepPoint]) -> None:
    """Two platforms with one name would share their rows in the figures (one of them silently lost); a
    bandwidth scale can push a valid platform out of range (below 1 bit/cycle, or beyond finite)."""
    by_name: dict[str, tuple[str, PlatformSpec]] = {}
    for source in dict.fromkeys(pt.platform for pt in points):
        p = load_platform(source)
        first = by_name.setdefault(p.name, (source, p))
        if first[1] != p:
            both = f"{short_path(first[0])} and {short_path(source)}"
            raise SpecError(f"sweep: platforms {both} are both named {p.name!r} (their rows would be merged; give "
                            "each platform YAML its own name:)")  # fmt: skip
    for source, bw in dict.fromkeys((pt.platform, pt.bw_scale) for pt in points if pt.bw_scale != 1.0):
        p = load_platform(source)
        PlatformSpec.validate_fields({**p.model_dump(), "dram_gb_s": p.dram_gb_s * bw},
                                     f"platform {p.name} at bw_scale {bw:g}")  # fmt: skip


def _connect(address: str):
    """A dask.distributed client, or one FaultError line within DASK_CONNECT_TIMEOUT_S. Client's own timeout
    does not cover a server that accepts the connection but is no scheduler (it waits forever, or reads its
    bytes as a frame length), so the attempt runs in a daemon thread that is abandoned when it does not answer."""
    from distributed import Client

    box: dict = {}

    def attempt() -> None:
        try:
            box["client"] = Client(address, timeout=DASK_CONNECT_TIMEOUT_S)
        except BaseException as exc:  # OSError, TimeoutError, MemoryError from garbage, ...
            box["error"] = exc

    log = logging.getLogger("distributed")
    level = log.level
    log.setLevel(logging.CRITICAL)  # its retry log would be many lines for the one we print
    thread = threading.Thread(target=attempt, name="dask-connect", daemon=True)
    thread.start()
    thread.join(DASK_CONNECT_TIMEOUT_S + 2)
    if "client" in box:
        log.setLevel(level)
        return box["client"]
    why = one_line(box["error"]) if "error" in box else "no answer from a dask scheduler"
    raise FaultError(f"--dask: cannot connect to scheduler {excerpt(address)} within {DASK_CONNECT_TIMEOUT_S:g} s "
                     f"({why})")  # fmt: skip


def run_sweep(
    spec_or_points: SweepSpec | Iterable[SweepPoint],
    store: ResultStore | str | Path,
    workers: int = 2,
    dask_address: str | None = None,
    timeout_s: float = 900.0,
    retry_failed: bool = False,
    progress: bool = True,
) -> dict:
    """Compute every point not yet in the store (none that a concurrent sweep on the store is running); returns
    the summary {total, computed, reused, failed, failed_before, wall_s}, see the module docstring. Analytic points
    (an engine that does not run in a process of its own) are computed in batches (`fast.run_analytic_batch`:
    exact count polynomials, one transaction per ANALYTIC_CHUNK rows), the others one by one in the pool.

    A failing point is stored with status "failed" and its one-line error. KeyboardInterrupt propagates after
    the running points are stopped and the claims released; every row finished so far is already committed.
    """
    t0 = time.perf_counter()
    started = time.time()
    SweepOptions.check(workers=workers, timeout=timeout_s, dask=dask_address)
    points = check_points(spec_or_points)
    client = _connect(dask_address) if dask_address else None
    own_store = not isinstance(store, ResultStore)
    try:
        store = ResultStore(store, readonly=False) if own_store else store
    except BaseException:
        if client is not None:
            client.close()
        raise
    try:
        keyed = _keyed(spec_or_points, points)
        ok, failed_before = store.keys("ok"), set() if retry_failed else store.keys("failed")
        stats = {"total": len(keyed), "computed": 0, "reused": len(ok & keyed.keys()), "failed": 0,
                 "failed_before": len(failed_before & keyed.keys())}  # fmt: skip
        todo = {k: p for k, p in keyed.items() if k not in ok and k not in failed_before}
        retry_before = started if retry_failed else None  # rows failed after this were retried by another sweep
        show = _Progress(stats, progress)

        def record(key: str, pt: SweepPoint, status: str, payload: dict | str) -> None:
            if status == "ok":
                store.put(payload)
                stats["computed"] += 1
            else:
                store.put(failed_row(pt, key, payload))
                stats["failed"] += 1
            show.update()

        try:
            while todo:
                mine = store.claim(todo, retry_before)
                if mine:
                    show.waiting = 0
                    batch = [(k, todo.pop(k)) for k in list(todo) if k in mine]
                    fast = {k: p for k, p in batch if registry.batched(p.engine)}
                    batch = _order([(k, p) for k, p in batch if k not in fast])
                    _run_analytic(fast, store, stats, show)
                    if fast and batch:
                        show.restart()
                    if batch and client is not None:
                        _run_dask(batch, client, timeout_s, record)
                    elif batch:
                        _run_local(batch, workers, timeout_s, record)
                for key, status in store.settled(todo, retry_before).items():  # written by another sweep
                    del todo[key]
                    stats["reused" if status == "ok" else "failed_before"] += 1
                if todo and not mine:
                    show.waiting = len(todo)
                    show.update()
                    time.sleep(POLL_S)
        finally:
            store.release()
            show.close()
        stats["wall_s"] = time.perf_counter() - t0
        return stats
    finally:
        if client is not None:
            client.close()
        if own_store:
            store.close()


ANALYTIC_CHUNK = 5000  # rows per transaction (and per progress update) of the analytic batch


def _keyed(spec_or_points, points: list[SweepPoint]) -> dict[str, SweepPoint]:
    """{key: point} in first-seen order: a spec's keys as it computed them (per group of points), a list's too."""
    if isinstance(spec_or_points, SweepSpec):
        return spec_or_points.keyed_points()
    return dict(reversed(list(zip(fast_keys(points), points, strict=True))))  # the first of equal keys wins


def _run_analytic(points: dict[str, SweepPoint], store: ResultStore, stats: dict, show) -> None:
    """The claimed analytic points in chunks: rows from the count polynomials, each chunk one transaction."""

    def committed(computed: int, failed: int) -> None:
        stats["computed"] += computed
        stats["failed"] += failed
        show.update()

    if points:
        run_analytic_batch(points, store, chunk=ANALYTIC_CHUNK, retry_failed=True, on_chunk=committed)


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


class _Progress:
    """A tqdm bar when stderr is a terminal; otherwise one line to stderr at most every LOG_EVERY_S and at the end:
    `sweep: 1200/2033 points (1000 computed, 150 cached, 50 failed), 3.4 pt/s, ETA 4 min`."""

    def __init__(self, stats: dict, enabled: bool):
        self.stats, self.waiting, self.t0 = stats, 0, time.perf_counter()
        self.last, self.since = self.t0, (self.t0, 0)  # the rate and the ETA count from `since` (see restart)
        tty = enabled and sys.stderr.isatty()
        self.log = enabled and not tty
        self.bar = None
        if tty:
            self.bar = tqdm(total=stats["total"], initial=self.settled(), unit="pt", smoothing=0.05,
                            dynamic_ncols=True, file=sys.stderr)  # fmt: skip
            self.bar.set_postfix(self.counts())

    def settled(self) -> int:
        return sum(self.stats[k] for k in ("computed", "reused", "failed", "failed_before"))

    def counts(self) -> dict:
        s = self.stats
        c = {"computed": s["computed"], "reused": s["reused"], "failed": s["failed"]}
        return c | ({"failed earlier": s["failed_before"]} if s["failed_before"] else {})

    def restart(self) -> None:
        """Count the rate from now: after the analytic batch (thousands of points a second) the engine points
        (seconds each) are left, and an ETA from the mixed rate would be off by orders of magnitude."""
        s = self.stats
        self.since = (time.perf_counter(), s["computed"] + s["failed"])

    def line(self) -> str:
        s, elapsed = self.stats, time.perf_counter() - self.since[0]
        counts = ", ".join(f"{v} {k}" for k, v in self.counts().items())
        text = f"sweep: {self.settled()}/{s['total']} points ({counts})"
        ran = s["computed"] + s["failed"] - self.since[1]
        if ran and elapsed > 0:
            rate = ran / elapsed
            left = s["total"] - self.settled()
            text += f", {rate:.3g} pt/s" + (f", ETA {_duration(left / rate)}" if left else "")
        return text + (f"; waiting for {self.waiting} points another sweep is running" if self.waiting else "")

    def update(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix(self.counts() | ({"waiting": self.waiting} if self.waiting else {}), refresh=False)
            self.bar.update(self.settled() - self.bar.n)
        elif self.log and time.perf_counter() - self.last >= LOG_EVERY_S:
            self.last = time.perf_counter()
            print(self.line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.update()
            self.bar.close()
        elif self.log:
            self.waiting = 0
            print(self.line(), file=sys.stderr, flush=True)


def _run_local(todo, workers: int, timeout_s: float, record) -> None:
    engines_before = live_engine_processes()
    engine_pool = ThreadPoolExecutor(workers, thread_name_prefix="sweep-engine")
    analytic_pool = ThreadPoolExecutor(1, thread_name_prefix="sweep-analytic")
    pending: dict[Future, tuple[str, SweepPoint]] = {}
    try:
        for key, pt in todo:
            pool = engine_pool if registry.get(pt.engine).runs_in_process else analytic_pool
            pending[pool.submit(_execute, pt.model_dump(), timeout_s)] = (key, pt)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                key, pt = pending.pop(fut)
                record(key, pt, *fut.result())
    except BaseException:
        for pool in (engine_pool, analytic_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        _kill_new_engines(engines_before)  # the running engine points end at once (their results are dropped)
        raise
    finally:
        engine_pool.shutdown(wait=True)
        analytic_pool.shutdown(wait=True)


def _run_dask(todo, client, timeout_s: float, record) -> None:
    from distributed import as_completed

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


if __name__ == "__main__":  # one point in a fresh process (used from daemonic dask workers)
    print(json.dumps(_execute(json.loads(sys.argv[1]), float(sys.argv[2]))))
