"""Every engine behind one interface (stream_mla.engines.registry): the registered engines and their properties,
the sweep names, the one version builder, the analytic engine against the closed-form roofline, `finish`, and the
sweep runner routing on the engines' properties instead of their names. No engine process runs here."""

import shutil
import threading
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

import stream_mla
import stream_mla.engines as engines
from stream_mla.engines import Hardware, registry
from stream_mla.engines.result import ENERGY_COMPONENTS, Result
from stream_mla.errors import SpecError
from stream_mla.models import PRESETS as MODELS
from stream_mla.platforms import load_platform
from stream_mla.sweeps import points, runner
from stream_mla.sweeps.points import ANALYTIC_CODE, PACKAGE, SweepPoint, code_digest, run_point
from stream_mla.workloads import build, make_spec
from stream_mla.workloads.counts import count

import closed_forms as cf

LITE = MODELS["deepseek-v2-lite"]
STRATEGIES = ("keep-softmax", "per-layer", "fixed-mapping", "fused-attention", "default-fusion")
SWEEP_NAMES = ("analytic", "analytic:serial", "zigzag", "stream", *(f"stream:{s}" for s in STRATEGIES))


def test_the_registry_lists_every_engine_with_its_properties():
    assert registry.names()[:3] == ("analytic", "zigzag", "stream")
    props = {e.name: (e.package, e.runs_in_process, e.strategies, e.measured) for e in registry.engines()}
    assert props["analytic"] == (None, False, ("serial",), False)
    assert props["zigzag"] == ("zigzag-dse", True, (), True)
    assert props["stream"] == ("stream-dse", True, STRATEGIES, True)
    assert points.ENGINES == SWEEP_NAMES == registry.sweep_names()
    assert points.ENGINE_PACKAGES == {"stream": "stream-dse", "zigzag": "zigzag-dse"}
    assert registry.names() == engines.ENGINES


@pytest.mark.parametrize("name", SWEEP_NAMES)
def test_parse_every_sweep_name(name):
    engine, strategy = registry.parse(name)
    base, _, forced = name.partition(":")
    assert (engine.name, strategy) == (base, forced or "auto")
    assert registry.get(name) is engine


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("stram", "--engine: 'stram' (allowed: analytic, zigzag, stream"),
        ("stream:bogus", "--strategy: 'bogus' for stream (allowed: keep-softmax, per-layer"),
        ("zigzag:fixed-mapping", "--strategy: 'fixed-mapping' for zigzag (allowed: none)"),
        ("stream:", "--strategy: '' for stream"),
    ],
)
def test_parse_refuses_unknown_names(name, message):
    with pytest.raises(SpecError) as exc:
        registry.parse(name)
    assert str(exc.value).startswith(message)


def test_one_version_builder(monkeypatch):
    # the exact strings stored today (they are part of every row's key)
    assert points.engine_version("analytic") == f"stream-mla {stream_mla.__version__}"
    assert points.engine_version("stream:fixed-mapping") == f"stream-dse {version('stream-dse')}"
    assert points.engine_version("zigzag") == f"zigzag-dse {version('zigzag-dse')}"
    # every stored string comes from the registry's builder: points, failed rows, the runners' Results
    monkeypatch.setattr(registry, "package_version", lambda package: f"built {package}")
    assert {points.engine_version(n) for n in SWEEP_NAMES} == {"built None", "built stream-dse", "built zigzag-dse"}
    pt = SweepPoint(model="deepseek-v2-lite", scheme="mha", context=256, platform="edge-npu", engine="stream:per-layer")
    assert runner.failed_row(pt, "k", "boom")["engine_version"] == "built stream-dse"
    assert run_point(pt.model_copy(update={"engine": "analytic"}))["engine_version"] == "built None"
    counts = count(build(pt.workload()))
    for name in ("stream", "zigzag"):
        res = registry.finish(name, load_platform("edge-npu"), "w", counts, latency_cycles=1.0, energy_pj=ZERO,
                              engine_dram_bytes=0.0, strategy="s", wall_s=0.0)  # fmt: skip
        assert res.engine_version == f"built {name}-dse"
    for runner_file in ("stream_runner.py", "zigzag_runner.py"):  # the runners end with finish(), nothing of their own
        source = (PACKAGE / "engines" / runner_file).read_text()
        assert "importlib.metadata" not in source and "engine_version=" not in source and "finish(" in source


ZERO = dict.fromkeys(ENERGY_COMPONENTS[:-1], 0.0)


def hand_case(phase: str):
    """deepseek-v2-lite MHA (the closed forms of attention-schemes.md §3) on edge-npu: bf16 (2 bytes), one 32x32
    core at 0.25 GHz = 2.56e11 MAC/s, 8 GB/s, 1.5 pJ/MAC, 25 pJ/bit."""
    if phase == "decode":
        forms = cf.decode(LITE, "mha", 2, 1024)
    else:
        forms = cf.prefill(LITE, "mha", 1, 512)
    elements = forms.weights + forms.kv_read + forms.kv_write + forms.activations
    dram_bytes = 2 * elements
    compute_s, memory_s = forms.macs / (32 * 32 * 0.25e9), dram_bytes / 8e9
    return forms.macs, dram_bytes, compute_s, memory_s


@pytest.mark.parametrize(("phase", "bound"), [("decode", "memory"), ("prefill", "compute")])
def test_analytic_result_is_the_closed_form_roofline(phase, bound, monkeypatch):
    macs, dram_bytes, compute_s, memory_s = hand_case(phase)
    assert (compute_s > memory_s) == (bound == "compute")
    t = max(compute_s, memory_s)
    spec = make_spec(model=LITE, scheme="mha", phase=phase, batch=2 if phase == "decode" else 1,
                     context=1024 if phase == "decode" else 512)  # fmt: skip
    p = load_platform("edge-npu")
    assert spec.on_platform(p.precision).precisions == dict.fromkeys(("weights", "kv_cache", "activations"), "bf16")

    def no_process(*a, **kw):
        raise AssertionError("the analytic engine started an engine process")

    monkeypatch.setattr(engines, "_run_in_process", no_process)
    res = engines.evaluate(spec, "edge-npu", "analytic")  # through the one entry point, in-process
    assert isinstance(res, Result)
    assert (res.engine, res.strategy, res.bound, res.platform) == ("analytic", "roofline", bound, "edge-npu")
    assert (res.macs, res.dram_bytes, res.engine_dram_bytes) == (macs, dram_bytes, float(dram_bytes))
    assert res.latency_s == res.roofline_bound_s == pytest.approx(t, rel=1e-12)
    assert res.latency_cycles == pytest.approx(t * 0.25e9, rel=1e-12)
    mac_pj, dram_pj = macs * 1.5, dram_bytes * 8 * 25.0
    assert list(res.energy_breakdown_pj) == list(ENERGY_COMPONENTS)
    assert res.energy_breakdown_pj == pytest.approx(
        {"mac": mac_pj, "onchip_memory": 0.0, "dram": dram_pj, "onchip_transfer": 0.0, "static": 0.0}, rel=1e-12
    )
    assert res.energy_pj == pytest.approx(mac_pj + dram_pj, rel=1e-12)
    assert (res.engine_wall_s, res.nodes, res.warnings, res.strategies) == (0.0, [], [], {})
    assert res.to_dict()["roofline_ratio"] == 1.0
    # the registry's engine and the sweep row say the same
    direct = registry.get("analytic").evaluate(spec.on_platform(p.precision), p)
    assert direct == res
    row = run_point(SweepPoint(model="deepseek-v2-lite", scheme="mha", phase=phase, batch=spec.batch,
                               context=spec.context, platform="edge-npu"))  # fmt: skip
    assert (row["latency_s"], row["roofline_s"], row["energy_pj"]) == (res.latency_s, res.latency_s, res.energy_pj)
    assert (row["hotspot"], row["strategies"], row["warnings"]) == (None, "{}", "[]")


def test_evaluate_validates_engine_and_strategy_through_the_registry():
    spec = make_spec(model=LITE, scheme="mha", phase="decode", batch=1, context=256)
    cases = [
        ({"engine": "stram"}, "--engine: 'stram' (allowed: analytic, zigzag, stream"),
        ({"engine": "stream:fixed-mapping"}, "--engine: 'stream:fixed-mapping'"),  # a sweep name, not an engine
        ({"engine": "zigzag", "strategy": "fixed-mapping"}, "--strategy: 'fixed-mapping' for zigzag (allowed: auto)"),
        ({"engine": "analytic", "strategy": "roofline"}, "--strategy: 'roofline' for analytic (allowed: auto, serial)"),
        ({"engine": "stream", "strategy": "x"}, "--strategy: 'x' for stream (allowed: auto, keep-softmax, per-layer"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SpecError) as exc:
            engines.evaluate(spec, "edge-npu", **kwargs)
        assert str(exc.value).startswith(message), (kwargs, str(exc.value))


def test_finish_uses_the_bound_platforms_one_bandwidth():
    """h100-like: 3350 GB/s at 1.83 GHz is 14644.8 bits/cycle, rounded to 14645 for the engines' port; the roofline
    is the platform's exact GB/s for every runner (Stream is handed a Hardware, ZigZag the platform spec)."""
    p = load_platform("h100-like")
    hw = Hardware.from_platform(p)
    assert hw.dram_bytes_per_s != p.dram_bytes_per_s  # the rounded port
    spec = make_spec(model=LITE, scheme="mha", phase="decode", batch=1, context=4096).on_platform(p.precision)
    counts = count(build(spec))
    memory_s = counts["bytes"]["total"] / 3350e9
    kw = {"latency_cycles": 2e6, "energy_pj": ZERO, "engine_dram_bytes": 1.0, "strategy": "s", "wall_s": 1.0}
    from_hw = registry.finish("stream", hw, "w", counts, **kw)
    from_spec = registry.finish("zigzag", p, "w", counts, **kw)
    assert from_hw.roofline_bound_s == from_spec.roofline_bound_s == memory_s and from_hw.bound == "memory"
    assert (from_hw.platform, from_hw.clock_ghz, from_hw.macs) == ("h100-like", 1.83, counts["macs"])
    # static energy from the platform's static power over the latency, unless given; components in order
    hot = p.model_copy(update={"static_power_w": 10.0})
    res = registry.finish("zigzag", hot, "w", counts, **{**kw, "energy_pj": {"dram": 2.0, **ZERO}})
    assert list(res.energy_breakdown_pj) == list(ENERGY_COMPONENTS)
    assert res.energy_breakdown_pj["static"] == pytest.approx(10.0 * 2e6 / 1.83e9 * 1e12, rel=1e-12)
    assert registry.finish("zigzag", hot, "w", counts, **{**kw, "energy_pj": {**ZERO, "static": 0.0}}).energy_pj == 0
    with pytest.raises(ValueError, match="unknown"):
        registry.finish("zigzag", p, "w", counts, **{**kw, "energy_pj": {**ZERO, "leak": 1.0}})


@dataclass(frozen=True)
class FakeEngine:
    name: str
    runs_in_process: bool
    package: str | None = None
    strategies: tuple[str, ...] = ()
    measured: bool = True
    batched: bool = False  # its rows come from evaluate, one point at a time

    def version(self) -> str:
        return registry.package_version(self.package)

    def evaluate(self, spec, platform, *, counts=None, timeout_s=1.0, workdir=None, strategy="auto") -> Result:
        return registry.get("analytic").evaluate(spec, platform, counts=counts)


@pytest.fixture
def fake_engines():
    fast, slow = FakeEngine("fake-fast", runs_in_process=False), FakeEngine("fake-slow", runs_in_process=True)
    for e in (fast, slow):
        registry.register(e)
    try:
        yield fast, slow
    finally:
        for e in (fast, slow):
            registry.unregister(e.name)
    assert "fake-fast" not in registry.names()


def _point(engine: str) -> SweepPoint:
    """A sweep point of any registered engine (SweepPoint.engine's Literal holds the shipped names only)."""
    fields = SweepPoint(model="deepseek-v2-lite", scheme="mha", context=256, platform="edge-npu").model_dump()
    return SweepPoint.model_construct(**{**fields, "engine": engine})


def test_the_runner_routes_by_property(fake_engines, monkeypatch):
    todo = [(f"k-{e}", _point(e)) for e in ("fake-fast", "fake-slow", "analytic", "stream")]
    monkeypatch.setattr(runner, "_execute", lambda point, timeout_s: ("ok", threading.current_thread().name))
    ran = {}
    runner._run_local(todo, 2, 1.0, lambda key, pt, status, thread: ran.update({pt.engine: thread}))
    on_analytic_thread = {e for e, thread in ran.items() if thread.startswith("sweep-analytic")}
    assert on_analytic_thread == {"fake-fast", "analytic"} and len(ran) == 4
    # engine-process engines first (the slow ones keep the pool busy), then the in-caller ones
    assert [pt.engine for _, pt in runner._order(todo)][:2] == ["fake-slow", "stream"]


def test_a_daemonic_worker_runs_only_engine_process_points_in_a_subprocess(monkeypatch):
    """Dask workers are daemonic: a point whose engine runs in an engine process goes to a plain subprocess, one
    that runs in the caller does not, whatever its name (zigzag swapped for an in-caller fake here)."""
    monkeypatch.setattr(runner.multiprocessing, "current_process", lambda: type("P", (), {"daemon": True})())
    monkeypatch.setattr(runner, "_execute_in_subprocess", lambda point, timeout_s: ("ok", "subprocess"))
    monkeypatch.setattr(runner, "run_point", lambda pt, timeout_s: {"here": pt.engine})
    monkeypatch.setattr(runner, "unstorable", lambda row: None)
    one = _point("zigzag").model_dump()
    assert runner._execute(one, 1.0) == ("ok", "subprocess")
    assert runner._execute({**one, "engine": "analytic"}, 1.0) == ("ok", {"here": "analytic"})
    monkeypatch.setitem(registry._REGISTRY, "zigzag", FakeEngine("zigzag", runs_in_process=False))
    assert runner._execute(one, 1.0) == ("ok", {"here": "zigzag"})


def test_the_analytic_digest_holds_the_analytic_engine_and_not_the_runners(tmp_path):
    assert {"engines/registry.py", "engines/result.py", "sweeps/points.py", "sweeps/fast.py"} <= set(ANALYTIC_CODE)
    assert not {"engines", "engines/stream_runner.py", "engines/zigzag_runner.py"} & set(ANALYTIC_CODE)
    root = tmp_path / "stream_mla"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_digest.__wrapped__(False, root)
    engine_before = code_digest.__wrapped__(True, root)
    for runner_file in ("stream_runner.py", "zigzag_runner.py"):
        path = root / "engines" / runner_file
        path.write_text(path.read_text() + "\n# changed\n")
    assert code_digest.__wrapped__(False, root) == before  # a Stream change does not recompute analytic rows
    assert code_digest.__wrapped__(True, root) != engine_before
    reg = root / "engines" / "registry.py"
    reg.write_text(reg.read_text() + "\n# changed\n")
    assert code_digest.__wrapped__(False, root) != before
    (root / "sweeps" / "fast.py").unlink(missing_ok=True)  # a listed file that is not there hashes as nothing
    assert isinstance(code_digest.__wrapped__(False, Path(root)), str)
