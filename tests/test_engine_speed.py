"""The faster twins of Stream helpers (`engines/engine_speed.py`) give exactly what Stream's own functions give."""

import random

import pytest
import stream.plugins as plugins
import stream.workload.utils as utils
from xdsl.ir.affine import AffineExpr

from stream_mla.engines import engine_speed


def _random_expr(rng: random.Random, dims: int, depth: int) -> AffineExpr:
    """Sums and products by constants (either side) mostly, with now and then a mod, a floordiv, a ceildiv, a
    symbol or a dim beyond the ones the caller counts: the forms the twin hands back to Stream (xdsl itself refuses
    a product of two dims)."""
    if depth == 0 or rng.random() < 0.25:
        roll = rng.random()
        if roll < 0.45:
            return AffineExpr.dimension(rng.randrange(dims + (1 if rng.random() < 0.05 else 0)))
        if roll < 0.5:
            return AffineExpr.symbol(0)
        return AffineExpr.constant(rng.randint(-40, 40))
    a, b = _random_expr(rng, dims, depth - 1), _random_expr(rng, dims, depth - 1)
    roll = rng.random()
    if roll < 0.45:
        return a + b
    if roll < 0.85:
        return (
            a * AffineExpr.constant(rng.randint(-9, 9))
            if rng.random() < 0.5
            else AffineExpr.constant(rng.randint(-9, 9)) * a
        )
    c = AffineExpr.constant(rng.randint(1, 7))
    return [a % c, a // c, a.ceil_div(c)][rng.randrange(3)]


def _outcome(fn, expr, n):
    try:
        return "ok", fn(expr, n)
    except Exception as exc:  # the twin must raise what Stream raises
        return "error", type(exc)


def test_affine_coefficients_equal_streams_own():
    engine_speed.install()
    original = engine_speed._installed["original"]
    assert utils.affine_coefficients is engine_speed.affine_coefficients
    rng = random.Random(7)
    forms = {"ok": 0, "error": 0}
    for _ in range(3000):
        n = rng.randint(1, 12)
        expr = _random_expr(rng, n, rng.randint(0, 6))
        want = _outcome(original, expr, n)
        assert _outcome(engine_speed.affine_coefficients, expr, n) == want, str(expr)
        forms[want[0]] += 1
    assert forms["ok"] > 2000 and forms["error"] > 20  # both kinds really were exercised


@pytest.mark.parametrize("text", ["d0 * 64 + d1 + 3", "(d2 + d0) * 8 - d1 * 2"])
def test_affine_coefficients_by_hand(text):
    d0, d1, d2 = (AffineExpr.dimension(i) for i in range(3))
    expr = {"d0 * 64 + d1 + 3": d0 * 64 + d1 + 3, "(d2 + d0) * 8 - d1 * 2": (d2 + d0) * 8 - d1 * 2}[text]
    want = {"d0 * 64 + d1 + 3": (3, [64, 1, 0]), "(d2 + d0) * 8 - d1 * 2": (0, [8, -2, 8])}[text]
    assert engine_speed.affine_coefficients(expr, 3) == want


def test_distribution_names_are_streams_own():
    engine_speed.install()
    original = engine_speed._installed["distribution_of"]
    eps = plugins._entry_points("stream.core_cost_backends")
    assert eps  # Stream's own backends are declared
    for ep in eps:
        assert engine_speed.distribution_of(ep) == original(ep) == engine_speed.distribution_of(ep)


def test_affine_transforms_equal_streams_own():
    """`AffineTransform.from_affine_map` on random maps (1-5 results): the same A and b, with their dtypes and
    shapes, or the same error."""
    import numpy as np
    from stream.workload.affine_transform import AffineTransform
    from xdsl.ir.affine import AffineMap

    engine_speed.install()
    original = engine_speed._installed["from_affine_map"].__func__
    rng = random.Random(11)
    kinds = {"ok": 0, "error": 0}
    for _ in range(1500):
        n = rng.randint(1, 10)
        amap = AffineMap(n, 0, tuple(_random_expr(rng, n, rng.randint(0, 5)) for _ in range(rng.randint(1, 5))))
        want = _outcome(lambda m, _n: original(AffineTransform, m), amap, n)
        got = _outcome(lambda m, _n: AffineTransform.from_affine_map(m), amap, n)
        kinds[want[0]] += 1
        if want[0] == "error":
            assert got == want
            continue
        (_, w), (_, g) = want, got
        for x, y in ((w.A, g.A), (w.b, g.b)):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), str(amap)
    assert kinds["ok"] > 500 and kinds["error"] > 20


def test_spatial_mapping_copy_is_an_independent_equal_copy():
    from zigzag.datatypes import LayerDim, OADimension
    from zigzag.mapping.spatial_mapping import MappingSingleOADim, SpatialMapping

    engine_speed.install_zigzag()
    d1, d2, k, c = OADimension("D1"), OADimension("D2"), LayerDim("K"), LayerDim("C")
    sm = SpatialMapping({d1: MappingSingleOADim({k: 32, c: 2}), d2: MappingSingleOADim({c: 16})})
    sm.initialize_oa_dims({d1: 64, d2: 64})
    new = sm.copy()
    assert new == sm and new.oa_dim_sizes == sm.oa_dim_sizes and new is not sm
    assert list(new.items())[0][1].get_data() == {k: 32, c: 2}  # the same order
    new[d1][k] = 8
    new.oa_dim_sizes[d2] = 1
    assert sm[d1][k] == 32 and sm.oa_dim_sizes[d2] == 64  # the original is untouched
    odd = SpatialMapping({d1: MappingSingleOADim({k: 4})})
    odd.extra = [1]  # an attribute the twin does not know: deep-copied as before
    got = odd.copy()
    assert got == odd and got.extra == [1] and got.extra is not odd.extra


def test_zigzag_gives_the_same_numbers_with_and_without_the_twin(tmp_path, monkeypatch):
    """A real ZigZag search (V2-Lite absorb decode on edge-npu, no cost cache) with ZigZag's own deepcopy and with
    the twin: every number equal."""
    import dataclasses

    from zigzag.mapping.spatial_mapping import SpatialMapping

    from stream_mla.engines import zigzag_runner
    from stream_mla.models import PRESETS as MODELS
    from stream_mla.platforms import PRESETS
    from stream_mla.workloads import export, make_spec

    monkeypatch.setenv("STREAM_MLA_CACHE", "off")
    path = export(make_spec(model=MODELS["deepseek-v2-lite"], scheme="mla-absorb", context=256), tmp_path / "g.onnx")
    engine_speed.install_zigzag()
    twin = zigzag_runner.evaluate_zigzag(path, PRESETS["edge-npu"], tmp_path / "twin")
    monkeypatch.setattr(SpatialMapping, "copy", engine_speed._installed["spatial_mapping_copy"])
    monkeypatch.setattr(engine_speed, "install_zigzag", lambda: None)
    own = zigzag_runner.evaluate_zigzag(path, PRESETS["edge-npu"], tmp_path / "own")

    def numbers(r):
        return {k: v for k, v in dataclasses.asdict(r).items() if k != "engine_wall_s"}

    assert numbers(twin) == numbers(own)


def test_spatial_mapping_checks_equal_zigzags_own():
    """is_valid and get_performance_indicator on random mappings (int and float unrollings, dims missing from the
    limits or the layer, over-full OA dims): the same answer as ZigZag's own, bit for bit, or the same error."""
    from zigzag.datatypes import LayerDim, OADimension
    from zigzag.mapping.spatial_mapping import MappingSingleOADim, SpatialMapping

    engine_speed.install_zigzag()
    own_valid, own_indicator = engine_speed._installed["is_valid"], engine_speed._installed["indicator"]
    rng = random.Random(5)
    dims = [LayerDim(n) for n in "KCBHLD"]
    oas = [OADimension(f"D{i}") for i in range(1, 4)]
    answers = {True: 0, False: 0}

    def outcome(call):
        try:
            return "ok", call()
        except Exception as exc:
            return "error", type(exc)

    for _ in range(4000):
        used = oas[: rng.randint(1, 3)]
        unrolls = {
            oa: {d: rng.choice([1, 2, 4, 8, 16, 2.5]) for d in rng.sample(dims, rng.randint(0, 3))} for oa in used
        }
        sm = SpatialMapping({oa: MappingSingleOADim(u) for oa, u in unrolls.items()})
        sm.initialize_oa_dims({oa: rng.choice([4, 16, 64]) for oa in used})
        limits = {oa: {d: rng.choice([2, 8, 32]) for d in dims if rng.random() < 0.85} for oa in used}
        layer = {d: rng.choice([1, 4, 16, 64, 128]) for d in dims if rng.random() < 0.9}
        want = outcome(lambda: own_valid(sm, limits, layer))  # noqa: B023 -- called at once
        assert outcome(lambda: sm.is_valid(limits, layer)) == want  # noqa: B023
        if want[0] == "ok":
            answers[want[1]] += 1
        want = outcome(lambda: own_indicator(sm))  # noqa: B023
        got = outcome(lambda: sm.get_performance_indicator())  # noqa: B023
        assert got == want and (want[0] == "error" or type(got[1]) is type(want[1]))
    assert answers[True] > 100 and answers[False] > 100


def _engines_own(monkeypatch) -> None:
    """Put back every function the twins replace (engine_speed.install), for this test only."""
    for owner, name, own in engine_speed._replaced:
        monkeypatch.setattr(owner, name, own)
    monkeypatch.setattr(engine_speed, "install", lambda: None)
    monkeypatch.setattr(engine_speed, "install_zigzag", lambda: None)


def test_stream_gives_the_same_numbers_with_and_without_the_twins(tmp_path, monkeypatch):
    """A real Stream search (V2-Lite absorb decode, split-KV, on h100-like's 8 matrix cores: routes, multicasts and
    a fused group; no cost cache, so ZigZag runs too) with every twin and with the engines' own functions: every
    number equal. And on every decision space Stream built, the twin's moved bits equal Stream's for every transfer,
    route, source and target."""
    import dataclasses

    import stream.opt.allocation.constraint_optimization.space as space

    from stream_mla.engines import Hardware
    from stream_mla.engines.stream_runner import FUSED_ATTENTION, evaluate_stream
    from stream_mla.models import PRESETS as MODELS
    from stream_mla.platforms import PRESETS
    from stream_mla.workloads import export, make_spec

    monkeypatch.setenv("STREAM_MLA_CACHE", "off")
    spec = make_spec(model=MODELS["deepseek-v2-lite"], scheme="mla-absorb", context=512, kv_chunks=8)
    path = export(spec, tmp_path / "g.onnx")
    hw = Hardware.from_platform(PRESETS["h100-like"])
    strategies = (FUSED_ATTENTION, "keep-softmax")
    (tmp_path / "twin").mkdir()
    (tmp_path / "own").mkdir()
    engine_speed.install()
    spaces, built = [], space.DecisionSpace.__init__

    def keep(self, problem):
        built(self, problem)
        spaces.append(self)

    with monkeypatch.context() as m:
        m.setattr(space.DecisionSpace, "__init__", keep)
        twin = evaluate_stream(path, hw, tmp_path / "twin", strategies=strategies)
    assert spaces
    checked = 0
    for s in spaces:
        for tr in s.transfer_nodes:
            for choice in s.path_choices.get(tr, ()):
                for side in [{}, *({"source": c} for c in choice.sources), *({"target": c} for c in choice.targets)]:
                    assert engine_speed.moved_bits(s, tr, choice, **side) == engine_speed._installed["moved_bits"](
                        s, tr, choice, **side
                    )
                    checked += 1
    assert checked > 100
    _engines_own(monkeypatch)
    own = evaluate_stream(path, hw, tmp_path / "own", strategies=strategies)

    def numbers(r):
        return {k: v for k, v in dataclasses.asdict(r).items() if k != "engine_wall_s"} | {
            "strategies": {k: {f: x for f, x in v.items() if f != "wall_s"} for k, v in r.strategies.items()}
        }

    assert twin.strategies[FUSED_ATTENTION]["status"] == "ok"
    assert numbers(twin) == numbers(own)


def test_moved_bits_equals_streams_own_on_overlaps_and_sliding_halos():
    """The branches the attention graphs never take (windows overlapping neighbouring tiles, a sliding loop keeping
    a halo resident), on a stand-in space that answers what moved_bits asks: the twin's bits equal Stream's, and
    the stand-in tiles each transfer once however often it is asked."""
    from types import SimpleNamespace

    import stream.opt.allocation.constraint_optimization.space as space

    own = engine_speed._installed.get("moved_bits", space.DecisionSpace.moved_bits)

    class Tensor:  # hashable, as Stream's tensors are
        def __init__(self, bits, shape, operand_type=None):
            self.bits, self.shape, self.operand_type = bits, shape, operand_type

        def size_bits(self):
            return self.bits

    class Space:
        def __init__(self, overlaps, halo):
            self._overlaps, self._halo, self.tiled = overlaps, halo, 0
            self.mapping, self.ssis = object(), {}
            self.hardware = SimpleNamespace(shares_memory=lambda a, b: (a, b) == ("c0", "c2"))
            self.workload = SimpleNamespace(
                sliding_halo=lambda *a: self._halo, get_tensor_of_transfer_to_single_core=self.tile
            )

        def overlaps(self, tr):
            return self._overlaps

        def tile(self, *args, **kw):
            self.tiled += 1
            return Tensor(bits=3 * 7 * 16, shape=(3, 7))

    src = Tensor(bits=12 * 7 * 16, shape=(12, 7), operand_type=SimpleNamespace(bitwidth=16))

    class Transfer:  # hashable, as Stream's transfer nodes are
        inputs, outputs = [src], [Tensor(bits=0, shape=(12, 7))]

    tr = Transfer()
    choice = SimpleNamespace(sources=["c0", "c1"], targets=["c2", "c3", "c4"])
    sides = [
        {},
        {"source": "c0"},
        {"source": "c1"},
        {"target": "c2"},
        {"target": "c4"},
        {"source": "c1", "target": "c3"},
    ]
    cases = [({}, (0, 2)), ({}, None), ({(0, 0): 5, (0, 1): 9, (1, 2): 4}, None), ({(1, 1): 3}, (0, 1))]
    for overlaps, halo in cases:
        twin, stream = Space(overlaps, halo), Space(overlaps, halo)
        got = [engine_speed.moved_bits(twin, tr, choice, **side) for side in sides]
        assert got == [own(stream, tr, choice, **side) for side in sides], (overlaps, halo)
        assert twin.tiled == (0 if overlaps else 1) and stream.tiled >= twin.tiled
