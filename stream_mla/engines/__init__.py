"""One entry point over both engines: `evaluate(workload, platform, engine) -> Result`.

Each engine run happens in its own spawned process with a timeout and its own output folder, so a hung
solve or a crash inside an engine never takes the caller down, and engine logging stays in that process.
"""

import multiprocessing
import tempfile
import traceback
from pathlib import Path

from stream_mla.engines.hardware import Hardware
from stream_mla.engines.result import ENERGY_COMPONENTS, STREAM_STRATEGIES, EngineError, NodeResult, Result
from stream_mla.errors import SpecError
from stream_mla.platforms import PlatformSpec, load_platform
from stream_mla.workloads import WorkloadSpec, compute_precision, export
from stream_mla.workloads.counts import count_file
from stream_mla.workloads.graph import TENSOR_CLASSES

ENGINES = ("stream", "zigzag")
DEFAULT_TIMEOUT_S = 900.0

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
    """In-process run (the child side of evaluate)."""
    if engine == "stream":
        from stream_mla.engines.stream_runner import evaluate_stream

        return evaluate_stream(onnx_path, hw, workdir, STREAM_STRATEGIES if strategy == "auto" else (strategy,))
    if hw.platform is None:
        raise SpecError("--engine zigzag needs a platform spec (--platform), not a raw Stream --hardware YAML")
    from stream_mla.engines.zigzag_runner import evaluate_zigzag

    return evaluate_zigzag(onnx_path, hw.platform, workdir)


def _child(conn, engine: str, onnx_path: Path, hw: Hardware, workdir: Path, strategy: str) -> None:
    try:
        conn.send(("ok", run_engine(engine, onnx_path, hw, workdir, strategy)))
    except SpecError as exc:
        conn.send(("spec", str(exc)))
    except EngineError as exc:
        conn.send(("error", str(exc)))
    except Exception as exc:  # reported to the parent as one line, with the trace saved in the run folder
        (workdir / "error.txt").write_text(traceback.format_exc())
        conn.send(("error", f"{exc.__class__.__name__}: {exc}"))


def evaluate(
    workload: WorkloadSpec | str | Path,
    platform: PlatformSpec | Hardware | str | Path,
    engine: str = "stream",
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    workdir: str | Path | None = None,
    strategy: str = "auto",
) -> Result:
    """Latency and energy of one attention layer on one accelerator, from a real engine run.

    workload: a WorkloadSpec (exported in shapes mode into the run folder) or an exported .onnx file.
    platform: a preset name, a platform YAML, a PlatformSpec, or a Hardware (e.g. from a raw Stream YAML). A
    workload precision left unset follows the platform's native one; the engines see the platform's peak at the
    workload's compute precision (an unsupported one is a SpecError naming both).
    strategy: Stream only; "auto" tries keep-softmax, per-layer, then the fixed mapping; a name runs just that one.
    """
    if engine not in ENGINES:
        raise SpecError(f"--engine: {engine!r} (allowed: {', '.join(ENGINES)})")
    if strategy != "auto" and (engine != "stream" or strategy not in STREAM_STRATEGIES):
        allowed = ("auto", *STREAM_STRATEGIES) if engine == "stream" else ("auto",)
        raise SpecError(f"--strategy: {strategy!r} for {engine} (allowed: {', '.join(allowed)})")
    if not isinstance(workload, WorkloadSpec):
        workload = Path(workload)
        if not workload.is_file():
            raise SpecError(f"workload: no such ONNX file {workload}")
    workload, hw = bind(workload, platform)
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"stream-mla-{engine}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = export(workload, workdir / f"{workload.slug}.onnx") if isinstance(workload, WorkloadSpec) else workload
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no engine state shared between runs
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child, args=(child, engine, onnx_path.resolve(), hw, workdir.resolve(), strategy), daemon=True
    )
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            raise EngineError(f"{engine} on {hw.name}: {onnx_path.stem} timed out after {timeout_s:.0f} s")
        status, payload = parent.recv()
    except EOFError:
        raise EngineError(f"{engine} on {hw.name}: {onnx_path.stem}: the engine process died") from None
    finally:
        proc.kill()
        proc.join()
    if status == "spec":
        raise SpecError(payload)
    if status == "error":
        raise EngineError(payload if payload.startswith("platform ") else f"{engine} on {hw.name}: {payload}")
    return payload
