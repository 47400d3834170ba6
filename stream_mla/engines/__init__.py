"""One entry point over every engine: `evaluate(workload, platform, engine) -> Result`.

The engines and their properties are the registry's (`stream_mla.engines.registry`). One that does not run in an
engine process (`runs_in_process` False: the analytic roofline) is evaluated here, in the caller. Each run of the
others (Stream, ZigZag) happens in its own process (a fresh interpreter) with a timeout and its own output folder,
so a hung solve or a crash inside an engine never takes the caller down, and engine logging stays in that process.
On Linux each run is a fork of a *zygote*: an engine process that imported the engines once (~2 s of imports a run
saved) and forks a fresh child per job, so every run starts from the same just-imported state and none sees what
an earlier run left behind; the zygote is kept for the next run of the thread that started it (`_IDLE`), and a run
that times out, fails to report or is interrupted takes its zygote down with it. Elsewhere each run is a fresh
interpreter. Either is started as `python -c ...`, not by multiprocessing's spawn, which re-imports the caller's
main module: evaluate() then works from a plain script without an `if __name__ == "__main__":` guard. It runs in
its own session (Ctrl-C reaches the caller, which stops it), and it dies with its caller, even after `kill -9`
(the zygote with the caller, a run with its zygote).
"""

import atexit
import contextlib
import ctypes
import importlib
import json
import math
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from stream_mla.engines import registry
from stream_mla.engines.hardware import Hardware
from stream_mla.engines.result import ENERGY_COMPONENTS, EngineError, NodeResult, Result
from stream_mla.errors import SpecError
from stream_mla.platforms import PlatformSpec, load_platform
from stream_mla.workloads import WorkloadSpec, compute_precision, export
from stream_mla.workloads.counts import count_file
from stream_mla.workloads.graph import TENSOR_CLASSES

ENGINES = registry.names()
DEFAULT_TIMEOUT_S = registry.DEFAULT_TIMEOUT_S

__all__ = ["ENERGY_COMPONENTS", "ENGINES", "EngineError", "Hardware", "NodeResult", "Result", "evaluate"]


def bind(
    workload: WorkloadSpec | Path, platform: PlatformSpec | Hardware | str | Path
) -> tuple[WorkloadSpec | Path, Hardware]:
    """The workload as run on the platform (unset precisions follow the platform's native one) and the hardware
    the engines see for it (the platform at the workload's compute precision: its peak at that precision). A raw
    Stream YAML (a Hardware) is taken as it is."""
    if isinstance(platform, Hardware):
        return workload, platform
    p = platform if isinstance(platform, PlatformSpec) else load_platform(platform)
    if isinstance(workload, WorkloadSpec):
        workload = workload.on_platform(p.precision)
        precision = workload.compute_precision
    else:
        precision = compute_precision(count_file(workload)["precision"] or dict.fromkeys(TENSOR_CLASSES, p.precision))
    return workload, Hardware.from_platform(p.at_precision(precision))


def run_engine(engine: str, onnx_path: Path, hw: Hardware, workdir: Path, strategy: str = "auto") -> Result:
    """In-process run (the child side of evaluate): the engine's runner."""
    return registry.get(engine).run(onnx_path, hw, workdir, strategy)


def _run_job(engine: str, onnx_path: Path, hw: Hardware, workdir: Path, strategy: str) -> tuple[str, object]:
    """(status, payload) of one engine run; never raises."""
    try:
        return "ok", run_engine(engine, onnx_path, hw, workdir, strategy)
    except SpecError as exc:
        return "spec", str(exc)
    except EngineError as exc:
        return "error", str(exc)
    except Exception as exc:  # reported to the parent as one line, with the trace saved in the run folder
        (workdir / "error.txt").write_text(traceback.format_exc())
        return "error", f"{exc.__class__.__name__}: {exc}"


# --- the engine process -------------------------------------------------------------------------------------
# The child imports nothing of the caller's script: its import path is the caller's (as spawn would set it),
# its job comes pickled on stdin, and its (status, payload) goes back in a file of the run folder.
_CHILD_CODE = "import json, sys; sys.path[:] = json.loads(sys.argv[1]); import stream_mla.engines as e; e._child()"
RESULT_FILE = ".engine-result.pickle"
_live: set = set()  # subprocess.Popen or _Forked
_live_lock = threading.Lock()


def live_engine_processes() -> set:
    """The engine processes (each with a `kill()`) that evaluate() calls of this process (any thread) are running
    now: fresh processes, or a zygote's forks (an idle zygote runs nothing and is not among them)."""
    with _live_lock:
        return set(_live)


def _child() -> None:
    _die_with_parent(int(sys.argv[2]))
    try:
        job = pickle.load(sys.stdin.buffer)
    except (EOFError, pickle.UnpicklingError):  # the caller went away before sending the job
        os._exit(1)
    _serve(job)


def _serve(job: dict) -> None:
    """Run one job, leave its (status, payload) in its run folder, and end this process."""
    out = job["workdir"] / RESULT_FILE
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(_run_job(**job)))
    os.replace(tmp, out)  # the caller sees a whole result or none
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the engines' interpreter teardown


# --- the zygote (Linux): one engine process that imported the engines, forking a child per job ------------------
_ZYGOTE_CODE = "import json, sys; sys.path[:] = json.loads(sys.argv[1]); import stream_mla.engines as e; e._zygote()"
ZYGOTE = sys.platform.startswith("linux")  # fork is safe there: the zygote never runs a job or starts a thread
PRELOAD = ("stream_mla.engines.stream_runner", "stream_mla.engines.zigzag_runner")  # what a run imports
_IDLE: list["_Zygote"] = []  # zygotes waiting for a job
_idle_lock = threading.Lock()


def _zygote() -> None:
    """Import the engines, then for each job (a length line and its pickle on stdin) fork a child that runs it;
    report "pid N" when it starts and "done" when it ended on a private copy of stdout. Its own and its children's
    stdout go to stderr (the caller's), as a fresh engine process's do."""
    _die_with_parent(int(sys.argv[2]))
    for name in PRELOAD:
        importlib.import_module(name)
    ctrl = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    jobs, me = sys.stdin.buffer, os.getpid()
    while True:
        header = jobs.readline()
        if not header:  # the caller closed the pipe: no more jobs
            os._exit(0)
        job = pickle.loads(jobs.read(int(header)))
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the next job's bytes are not the child's
                ctrl.close()
                _die_with_parent(me)
                _serve(job)
            finally:
                os._exit(1)  # _serve ends the process; reaching here means it raised
        print(f"pid {pid}", file=ctrl)
        os.waitpid(pid, 0)
        print("done", file=ctrl)


class _Forked:
    """A run forked by a zygote, as the caller kills it (`live_engine_processes`)."""

    def __init__(self, pid: int):
        self.pid = pid

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)


class _Zygote:
    """The caller's side of one zygote: send a job, read its control lines with a deadline."""

    def __init__(self) -> None:
        cmd = [sys.executable, "-c", _ZYGOTE_CODE, json.dumps(sys.path), str(os.getpid())]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=sys.__stderr__ or subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.buffer = b""
        # Linux sends the parent-death signal when the *thread* that started a process ends: a zygote serves the
        # thread that started it only (a sweep's worker threads live as long as the sweep)
        self.thread = threading.current_thread()
        self.context = _context()  # what a fresh engine process would inherit: a zygote serves only this

    def send(self, job: dict) -> bool:
        data = pickle.dumps(job)
        try:
            self.proc.stdin.write(b"%d\n" % len(data) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def line(self, deadline: float) -> str | None:
        """The next control line, "" when the zygote is gone, None at the deadline (time.monotonic)."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


def _take_zygote() -> _Zygote:
    me, context = threading.current_thread(), _context()
    found = None
    with _idle_lock:
        for z in list(_IDLE):
            usable = z.proc.poll() is None and z.thread.is_alive()
            if usable and z.thread is me and z.context == context and found is None:
                found = z  # started by this thread, in the same environment
                _IDLE.remove(z)
            elif not usable or z.thread is me:  # dead, or this thread's under another environment: at most one
                _IDLE.remove(z)  # idle zygote per thread, so a caller whose environment changes keeps none behind
                z.close()
    return found or _Zygote()


def _context() -> tuple:
    """The import path, environment and working folder a run inherits (e.g. $STREAM_MLA_CACHE, which a caller
    may change between runs): a zygote started under others would run a job under those."""
    return json.dumps(sys.path), dict(os.environ), os.getcwd()


@atexit.register
def _close_idle_zygotes() -> None:
    with _idle_lock:
        while _IDLE:
            _IDLE.pop().close()


def _die_with_parent(parent: int) -> None:
    """End this process when its caller (pid `parent`) dies, so that `kill -9` of a sweep leaves no engine
    running: at once on Linux (PR_SET_PDEATHSIG), else within half a second (a watchdog thread). The caller may
    have died while this interpreter was starting: then the parent is already someone else, and it exits now."""
    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            armed = ctypes.CDLL(None).prctl(1, signal.SIGKILL) == 0  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)
    if armed:  # no watchdog thread: a zygote forks, and a process with one thread forks safely
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def _run_in_process(job: dict, timeout_s: float, what: str) -> tuple[str, object]:
    """Run `job` (the arguments of _run_job) in an engine process of its own (a zygote's fork on Linux, else a
    fresh interpreter); kill it after `timeout_s`, and whenever the caller stops waiting (an exception, Ctrl-C)."""
    out = job["workdir"] / RESULT_FILE
    out.unlink(missing_ok=True)
    status = _run_forked(job, timeout_s, what) if ZYGOTE else _run_fresh(job, timeout_s, what)
    if not out.is_file():
        raise EngineError(f"{what}: the engine process died ({status})")
    try:
        return pickle.loads(out.read_bytes())
    finally:
        out.unlink(missing_ok=True)


def _run_forked(job: dict, timeout_s: float, what: str) -> str:
    """The job in a fork of an idle zygote (a new one if none); returns how its process ended."""
    deadline = time.monotonic() + timeout_s  # imports of a new zygote count, as a fresh process's did
    z, child, clean = _take_zygote(), None, False
    try:
        started = z.line(deadline) if z.send(job) else ""
        if started is None:
            raise EngineError(f"{what} timed out after {timeout_s:g} s")
        if not started.startswith("pid "):
            return f"exit code {z.proc.poll()}"
        child = _Forked(int(started.split()[1]))
        with _live_lock:
            _live.add(child)
        ended = z.line(deadline)
        if ended is None:
            raise EngineError(f"{what} timed out after {timeout_s:g} s")
        clean = ended == "done"
        return "it was killed or crashed" if clean else f"exit code {z.proc.poll()}"
    finally:
        if child is not None:
            if not clean:
                child.kill()
            with _live_lock:
                _live.discard(child)
        if clean:
            with _idle_lock:
                _IDLE.append(z)
        else:
            z.close()


def _run_fresh(job: dict, timeout_s: float, what: str) -> str:
    """The job in a fresh engine process; returns how it ended."""
    cmd = [sys.executable, "-c", _CHILD_CODE, json.dumps(sys.path), str(os.getpid())]
    # Its own session: Ctrl-C at the terminal reaches the caller only, which then kills this process (an
    # interrupted engine would print its own traceback). Its stdout goes to stderr: `run --json` stays clean.
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=sys.__stderr__ or subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    with _live_lock:
        _live.add(proc)
    try:
        with contextlib.suppress(BrokenPipeError):  # a child that died at once is reported below
            proc.stdin.write(pickle.dumps(job))
            proc.stdin.close()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise EngineError(f"{what} timed out after {timeout_s:g} s") from None
    finally:
        proc.kill()  # a no-op once it has exited
        proc.wait()
        with _live_lock:
            _live.discard(proc)
    return f"exit code {proc.returncode}"


def evaluate(
    workload: WorkloadSpec | str | Path,
    platform: PlatformSpec | Hardware | str | Path,
    engine: str = "stream",
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    workdir: str | Path | None = None,
    strategy: str = "auto",
) -> Result:
    """Latency and energy of one attention layer on one accelerator, from a real engine run (or the roofline).

    workload: a WorkloadSpec (exported in shapes mode into the run folder) or an exported .onnx file.
    platform: a preset name, a platform YAML, a PlatformSpec, or a Hardware (e.g. from a raw Stream YAML). A
    workload precision left unset follows the platform's native one; the engines see the platform's peak at the
    workload's compute precision (an unsupported one is a SpecError naming both).
    engine: a registered engine (`registry.names()`); one that is not `runs_in_process` (analytic) runs here.
    strategy: one of the engine's `strategies` (Stream's); "auto" runs each of AUTO_STRATEGIES and keeps the fastest
    valid one (the result names it and records what each gave); a name runs just that one.
    """
    if engine not in registry.names():
        raise SpecError(f"--engine: {engine!r} (allowed: {', '.join(registry.names())})")
    eng = registry.get(engine)
    if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
        raise SpecError(f"--timeout: must be a positive number of seconds (got {timeout_s!r})")
    registry.check_strategy(eng, strategy)
    if not isinstance(workload, WorkloadSpec):
        workload = Path(workload)
        if not workload.is_file():
            raise SpecError(f"workload: no such ONNX file {workload}")
    workload, hw = bind(workload, platform)
    if not eng.runs_in_process:
        return eng.evaluate(workload, hw if hw.platform is None else hw.platform, timeout_s=timeout_s,
                            workdir=None if workdir is None else Path(workdir), strategy=strategy)  # fmt: skip
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"stream-mla-{engine}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = export(workload, workdir / f"{workload.slug}.onnx") if isinstance(workload, WorkloadSpec) else workload
    job = {"engine": engine, "onnx_path": onnx_path.resolve(), "hw": hw, "workdir": workdir.resolve(),
           "strategy": strategy}  # fmt: skip
    status, payload = _run_in_process(job, timeout_s, f"{engine} on {hw.name}: {onnx_path.stem}")
    if status == "spec":
        raise SpecError(payload)
    if status == "error":
        raise EngineError(payload if payload.startswith("platform ") else f"{engine} on {hw.name}: {payload}")
    return payload
