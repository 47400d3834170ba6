"""The analytic fast path against its oracles: count polynomials against the graphs' own counts, grouped rows and keys
against `run_point` and `SweepPoint.key()`, `put_many` against `put`, and failing groups against the runner's rows."""

import itertools
import random
import sqlite3

import pytest

from stream_mla.errors import SpecError
from stream_mla.models import PRESETS
from stream_mla.sweeps.fast import analytic_rows, fast_keys, run_analytic_batch
from stream_mla.sweeps.points import ROW_COLUMNS, SweepPoint, run_point
from stream_mla.sweeps.runner import failed_row, one_line
from stream_mla.sweeps.spec import SweepSpec
from stream_mla.sweeps.store import ResultStore, unstorable
from stream_mla.workloads import build, make_spec, polynomial, registry
from stream_mla.workloads.counts import count


def graph_counts(spec) -> tuple[int, ...]:
    """The oracle: the graph's own counts, in polynomial.COUNTS order."""
    c = count(build(spec))
    b = c["bytes"]
    return (c["macs"], c["macs_causal"], b["weights"], b["kv_read"], b["kv_write"], b["activations"], b["total"],
            c["bytes_layer_by_layer"])  # fmt: skip


def sizes_to_check(rng: random.Random, cuts: tuple[int, ...], queries: int | None) -> list[tuple[int, int, int]]:
    """(batch, context, queries): small and large, and both sides of every cut of the context axis."""
    lengths = [1, 2, 3, 64, 1000, rng.randint(5, 2**14), rng.randint(2**14, 2**20), 2**24]
    for c in cuts:
        lengths += [c - 1, c, c + 1, c + 2]
    out = []
    for length in lengths:
        q = queries if queries is not None else rng.choice([2, 3, 5, min(max(length, 2), 300)])
        out.append((rng.choice([1, 2, 3, 17, 640]), length, q))
    return out


def check_group(spec, rng: random.Random, extra: int = 0) -> list[str]:
    """The polynomial counts of the spec's group equal the graph's at sizes across its pieces; its pieces."""
    g = polynomial.group_of(polynomial.group_fields(spec), spec.context, spec.queries)
    cases = [s for s in sizes_to_check(rng, g.cuts(), g.queries) if g.valid(*s)]
    cases = [(b, g.context or length, q) for b, length, q in cases if g.context or g.decode or length > 1]
    cases = [s for s in cases if polynomial.group_of(g.fields, s[1], s[2]) == g][: 8 + extra]
    got = polynomial.counts(g, *map(list, zip(*cases, strict=True)))
    for s, value in zip(cases, got, strict=True):
        assert value == graph_counts(g.spec(*s)), (spec.slug, s)
    return polynomial.describe(g)


def model_for(scheme: str) -> str:
    record = registry.REGISTRY[scheme]
    for m in ("deepseek-v2-lite", "deepseek-v3.2", "llama-3.1-8b"):
        if PRESETS[m].family in record.applies_to and (scheme != "gqa" or PRESETS[m].family == "gqa"):
            return m
    raise AssertionError(f"no preset runs {scheme}")


# ---- (a) polynomials equal the graphs' counts -------------------------------------------------------------------
@pytest.mark.parametrize("scheme", registry.NAMES)
def test_every_scheme_phase_and_part(scheme):
    rng = random.Random(scheme)
    for phase in registry.REGISTRY[scheme].phases:
        for part in ("layer", "core"):
            for q in (1, 3) if phase == "decode" else (1,):
                spec = make_spec(model=PRESETS[model_for(scheme)], scheme=scheme, phase=phase, part=part, context=8,
                                 queries=q, precision="bf16")  # fmt: skip
                pieces = check_group(spec, rng)
                assert all(p.endswith("polynomial") for p in pieces), (scheme, phase, part, pieces)


def test_prefill_of_one_token_is_a_group_of_its_own():
    spec = make_spec(model=PRESETS["deepseek-v2-lite"], scheme="mla-absorb", phase="prefill", context=1)
    g = polynomial.group_of(polynomial.group_fields(spec), 1, 1)
    assert g.context == 1 and g.variables == ("batch",)
    assert polynomial.counts(g, [1, 5], [1, 1], [1, 1]) == [graph_counts(g.spec(b, 1, 1)) for b in (1, 5)]


@pytest.mark.parametrize("queries", [1, 3])
def test_sliding_window_is_piecewise_at_w_and_w_plus_q(queries):
    spec = make_spec(model=PRESETS["mistral-7b"], scheme="gqa", context=16, queries=queries, precision="bf16")
    w = PRESETS["mistral-7b"].sliding_window
    pieces = check_group(spec, random.Random(queries), extra=8)
    assert pieces[0] == f"[1, {w}]: polynomial" and len(pieces) == (2 if queries == 1 else 3)
    prefill = make_spec(model=PRESETS["mistral-7b"], scheme="gqa", phase="prefill", context=16, precision="bf16")
    assert check_group(prefill, random.Random(5), extra=8) == [f"[2, {w}]: polynomial",
                                                               f"[{w + 1}, 16777216]: polynomial"]  # fmt: skip


@pytest.mark.parametrize("queries", [1, 2])
def test_dsa_top_k_is_piecewise_at_k(queries):
    spec = make_spec(model=PRESETS["deepseek-v3.2"], scheme="mla-sparse", context=16, queries=queries)
    k = PRESETS["deepseek-v3.2"].index_topk
    assert check_group(spec, random.Random(7), extra=8) == [f"[1, {k}]: polynomial", f"[{k + 1}, 16777216]: polynomial"]


@pytest.mark.parametrize(
    ("model", "scheme", "kw"),
    [
        ("deepseek-v2-lite", "mla-absorb", {"kv_chunks": 4}),
        ("deepseek-v2-lite", "mla-recompute", {"kv_chunks": 2, "queries": 2}),
        ("llama-3.1-8b", "gqa", {"kv_chunks": 8, "part": "core"}),
        ("mistral-7b", "gqa", {"kv_chunks": 2, "queries": 2}),  # keys = min(L, W + 1): odd beyond W, never valid
        ("deepseek-v2-lite", "mla-naive", {"precision": "bf16", "kv_precision": "fp8", "act_precision": "fp32"}),
        ("deepseek-v3", "mha", {"precision": "int8", "act_precision": "bf16", "phase": "prefill"}),
        ("llama-3.1-8b", "mqa", {"window": 100, "queries": 4, "kv_precision": "fp8"}),
    ],
)
def test_split_kv_mixed_precisions_and_windows(model, scheme, kw):
    spec = make_spec(model=PRESETS[model], scheme=scheme, context=16, **{"precision": "bf16", **kw})
    check_group(spec, random.Random(str(kw)), extra=4)


def test_a_wrong_piece_is_caught_and_counted_directly(monkeypatch):
    """A window without its cuts is not one polynomial: the check at random sizes refuses it, the graphs count."""
    spec = make_spec(model=PRESETS["llama-3.1-8b"], scheme="gqa", context=16, window=1500, precision="bf16")
    g = polynomial.group_of(polynomial.group_fields(spec), 16, 1)
    monkeypatch.setattr(polynomial.Group, "cuts", lambda self: ())
    polynomial.pieces.cache_clear()
    try:
        assert polynomial.describe(g) == ["[1, 16777216]: direct"]
        sizes = [(1, 1400), (3, 1600), (2, 90000)]
        got = polynomial.counts(g, *map(list, zip(*sizes, strict=True)), [1] * len(sizes))
        assert got == [graph_counts(g.spec(b, c, 1)) for b, c in sizes]
    finally:
        polynomial.pieces.cache_clear()


def test_beyond_int64_in_python_integers_and_near_2_62_from_the_graph():
    spec = make_spec(model=PRESETS["deepseek-v3"], scheme="mha", phase="prefill", context=16)
    g = polynomial.group_of(polynomial.group_fields(spec), 16, 1)
    sizes = [(64, 2**20), (1, 2**20), (4096, 2**22)]  # the last one's tensors reach 2**62 bytes: the graph's own
    got = polynomial.counts(g, *map(list, zip(*sizes, strict=True)), [1, 1, 1])
    assert got[:2] == [graph_counts(g.spec(b, c, 1)) for b, c in sizes[:2]]
    assert got[0][0] > 2**53 and max(got[2]) >= 2**62


# ---- (b, c) rows and keys equal run_point's and key()'s ---------------------------------------------------------
FAMILIES = [  # (fields, platforms): varied sizes, platforms and bandwidths are drawn for each
    ({"model": "deepseek-v2-lite", "scheme": "mla-absorb"}, ["h100-like", "edge-npu"]),
    ({"model": "deepseek-v2-lite", "scheme": "mla-reuse", "kv_precision": "fp8"}, ["h20-like"]),
    ({"model": "deepseek-v2-lite", "scheme": "mha", "phase": "prefill"}, ["tpu-v5e-like", "cloud-fusemax"]),
    ({"model": "deepseek-v3", "scheme": "mla-recompute", "part": "core"}, ["h100-like"]),
    ({"model": "deepseek-v3", "scheme": "mla-merged", "precision": "fp8"}, ["h100-like", "h200-like"]),
    ({"model": "deepseek-v3", "scheme": "gqa", "kv_heads": 16}, ["h20-like"]),
    ({"model": "mistral-7b", "scheme": "gqa"}, ["h100-like"]),
    ({"model": "llama-3.1-8b", "scheme": "gqa", "kv_chunks": 4}, ["edge-npu"]),
    ({"model": "llama-3.1-8b", "scheme": "mqa", "window": 64}, ["h100-like"]),
    ({"model": "deepseek-v3.2", "scheme": "mla-sparse"}, ["h100-like"]),
]


def varied_points(n_per_family: int = 28, seed: int = 0) -> list[SweepPoint]:
    rng = random.Random(seed)
    out = []
    for fields, platforms in FAMILIES:
        for _ in range(n_per_family):
            decode = fields.get("phase", "decode") == "decode"
            context = rng.choice([1, 4, 63, 64, 1024, 2048, 2049, 4096, 4097, 5000, rng.randint(1, 200000)])
            q = rng.choice([1, 1, 2, 5]) if decode else 1
            context = max(context, q)
            if "kv_chunks" in fields:
                context += -context % 4
            sizes = {"batch": rng.choice([1, 2, 7, 64]), "context": context, "queries": q}
            where = {"platform": rng.choice(platforms), "bw_scale": rng.choice([1.0, 1.0, 0.25, 3.0])}
            out.append(SweepPoint(**fields, **sizes, **where))
    return out


def test_rows_and_keys_equal_run_point_and_key():
    pts = varied_points()
    want = [run_point(p) for p in pts]
    got = analytic_rows(pts)
    assert got == want
    for g, w in zip(got, want, strict=True):  # same columns in the same order, and the same types
        assert list(g) == list(ROW_COLUMNS) and [type(v) for v in g.values()] == [type(v) for v in w.values()]
    assert fast_keys(pts) == [p.key() for p in pts] == [r["key"] for r in want]
    engine = [
        p.model_copy(update={"engine": e}) for p in pts[:20] for e in ("zigzag", "stream", "stream:fixed-mapping")
    ]
    assert fast_keys(engine) == [p.key() for p in engine]


def test_a_failing_point_raises_its_own_error():
    good = SweepPoint(model="deepseek-v2-lite", scheme="mla-absorb", context=64, platform="h100-like")
    for bad in (good.model_copy(update={"queries": 100}),  # more queries than cache entries
                good.model_copy(update={"kv_chunks": 65}),  # more chunks than keys
                good.model_copy(update={"model": "llama-3.1-8b"}),  # a scheme the model cannot run
                good.model_copy(update={"precision": "int8", "platform": "cloud-fusemax"})):  # fmt: skip
        with pytest.raises(SpecError) as want:
            run_point(bad)
        with pytest.raises(SpecError) as got:
            analytic_rows([good, bad, good.model_copy(update={"batch": 3})])
        assert str(got.value) == str(want.value)
        if "precision" not in str(want.value):  # the platform's precision is checked by rows, not keys
            with pytest.raises(SpecError, match="^" + str(want.value)[:20]):
                fast_keys([good, bad])


def test_spec_points_keep_their_order_dedup_and_errors():
    doc = {"sweeps": [{"models": ["deepseek-v2-lite", "mistral-7b"], "schemes": ["mha", "mla-absorb", "mla-reuse"],
                       "context": [512, 4096, 8192], "batch": [1, 4], "platforms": ["h100-like", "edge-npu"],
                       "bw_scale": [1, 2], "queries": [1, 2]},
                      {"models": ["deepseek-v2-lite"], "schemes": ["mha"], "context": [512], "platforms": ["h100-like"],
                       "phases": ["decode", "prefill"]}]}  # fmt: skip
    doc["sweeps"][0]["schemes"] = ["mha", "mla-absorb"]  # mla-absorb on mistral: one line naming the point
    with pytest.raises(SpecError, match=r"sweeps\.0 \(mistral-7b mla-absorb decode B=1 L=512 on h100-like\): "):
        SweepSpec.from_dict(doc)
    doc["sweeps"][0]["models"] = ["deepseek-v2-lite"]
    doc["sweeps"][0]["schemes"] = ["mha", "mla-absorb", "mla-reuse"]  # an alias beside its scheme: listed twice
    with pytest.raises(SpecError, match="'mla-absorb' is listed twice"):
        SweepSpec.from_dict(doc)
    doc["sweeps"][0]["schemes"] = ["mha", "mla-absorb"]  # the second block repeats a point of the first
    spec = SweepSpec.from_dict(doc)
    seen = {}
    for block in spec.sweeps:
        for p in block.points():
            seen.setdefault(p.key(), p)
    assert spec.points() == list(seen.values()) and list(spec.keyed_points()) == list(seen)
    from stream_mla.sweeps import points

    before = spec.points()
    with pytest.MonkeyPatch.context() as mp:  # the memo of a spec's keys follows the code digest
        mp.setattr(points, "code_digest", lambda engines, root=points.PACKAGE: "another-version")
        assert list(spec.keyed_points()) == [p.key() for p in before] != list(seen)
    assert list(spec.keyed_points()) == list(seen)
    doc["sweeps"][0]["context"] = [1]  # queries 2 over a cache of 1: the first such point, by name
    with pytest.raises(SpecError, match=r"sweeps\.0 \(deepseek-v2-lite mha decode B=1 L=1 on h100-like\): queries: "):
        SweepSpec.from_dict(doc)


def test_block_points_are_what_sweep_point_validates():
    from stream_mla.sweeps.spec import AXES, Block

    block = Block.model_validate({"models": ["deepseek-v2-lite", "llama-3.1-8b"], "schemes": ["gqa", "mha"],
                                  "phases": ["decode", "prefill"], "context": [64, 128], "batch": [1, 3],
                                  "platforms": ["h100-like"], "bw_scale": [1, 0.5], "kv_heads": [None, 4],
                                  "queries": [1, 2], "kv_chunks": [None, 2], "precision": [None, "fp8"]})  # fmt: skip
    want = []
    for values in itertools.product(*(getattr(block, axis) for axis, _ in AXES)):
        p = dict(zip((field for _, field in AXES), values, strict=True))
        p["kv_heads"] = p["kv_heads"] if p["scheme"] == "gqa" else None
        p["queries"] = p["queries"] if p["phase"] == "decode" else 1
        p["kv_chunks"] = p["kv_chunks"] if p["phase"] == "decode" else None
        want.append(SweepPoint(**p))
    got = block.points()
    assert got == want
    for g, w in zip(got, want, strict=True):
        assert (repr(g), hash(g), g.model_dump(), g.model_fields_set) == (repr(w), hash(w), w.model_dump(),
                                                                           w.model_fields_set)  # fmt: skip
    assert got[1].model_copy(update={"batch": 9}).batch == 9 and got[0].model_fields_set == set(SweepPoint.model_fields)


# ---- (d) put_many stores what put stores -------------------------------------------------------------------------
def stored(path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM results ORDER BY rowid").fetchall()


def test_put_many_stores_what_put_stores(tmp_path):
    pts = varied_points(3, seed=1)
    rows = [run_point(p) for p in pts[:12]]
    rows += [failed_row(p, p.key(), "SpecError: no") for p in pts[12:16]] + [rows[0]]  # a repeat replaces
    with ResultStore(tmp_path / "one.sqlite") as one, ResultStore(tmp_path / "many.sqlite") as many:
        for r in rows:
            one.put(r)
        many.put_many(rows[:5])
        many.put_many(rows[5:])
        many.put_many([])
    assert stored(tmp_path / "one.sqlite") == stored(tmp_path / "many.sqlite")
    with ResultStore(tmp_path / "bad.sqlite") as store:
        for bad in (
            {**rows[1], "macs": 2**64},
            {**rows[1], "oi": float("nan")},
            {**rows[1], "latency_s": -float("inf")},
        ):
            with pytest.raises(SpecError, match=f"--db: row {rows[1]['key']}: " + unstorable(bad)[:8]):
                store.put_many([rows[2], bad])
            with pytest.raises(SpecError, match=f"--db: row {rows[1]['key']}: "):  # `checked` spares its own only
                store.put_many([bad, rows[2]], checked={1})
        assert len(store) == 0  # nothing of a refused batch is written
        store.put_many([{**rows[1], "window": None, "oi": 1e308, "energy_pj": 1e308}])  # a sum that overflows
        assert len(store) == 1


# ---- (e) a failing group fails alone ---------------------------------------------------------------------------
def runner_row(p: SweepPoint, key: str) -> dict:
    """What the runner stores for a point: its row, or a failed row with its one-line error."""
    try:
        row = run_point(p)
    except Exception as exc:
        return failed_row(p, key, one_line(exc))
    problem = unstorable(row)
    return failed_row(p, key, f"SpecError: {problem}") if problem else row


def test_failing_groups_become_failed_rows_and_the_rest_is_stored(tmp_path):
    good = varied_points(4, seed=2)[:24]
    no_key = [SweepPoint(model="llama-3.1-8b", scheme="mla-absorb", context=c, platform="h100-like") for c in (64, 99)]
    no_graph = [SweepPoint(model="deepseek-v3.2", scheme="mla-sparse", context=c, kv_chunks=2, platform="h100-like")
                for c in (64, 128)]  # fmt: skip
    no_rate = [SweepPoint(model="deepseek-v2-lite", scheme="mha", context=64, precision="fp8", platform="edge-npu")]
    huge = [SweepPoint(model="deepseek-v3", scheme="mha", phase="prefill", batch=2**16, context=2**20,
                       platform="h100-like")]  # fmt: skip
    pts = [*no_key[:1], *good[:12], *no_graph, *no_rate, *huge, *good[12:], *no_key[1:]]
    with ResultStore(tmp_path / "r.sqlite") as store:
        computed, failed = run_analytic_batch(pts, store, chunk=7)
        assert (computed, failed) == (len(good), len(pts) - len(good))
        rows = {r["key"]: r for r in store.table(include_failed=True).to_dict("records")}
        for p in [*good, *no_graph, *no_rate, *huge]:
            want = runner_row(p, p.key())
            assert store.get(p.key())["status"] == want["status"]
            assert {c: store.get(p.key())[c] for c in ("error", "model", "context")} == {
                c: want[c] for c in ("error", "model", "context")}  # fmt: skip
        unkeyed = [r for k, r in rows.items() if k.startswith("x")]
        assert len(unkeyed) == 2 and all("needs an MLA model" in r["error"] for r in unkeyed)
        assert run_analytic_batch(pts, store) == (0, 0)  # everything is cached, the failed points too
        assert run_analytic_batch(pts, store, retry_failed=True) == (0, len(pts) - len(good))
    with ResultStore(tmp_path / "k.sqlite") as store:  # {key: point} of a spec: the keys as they are
        block = {"models": ["deepseek-v2-lite"], "schemes": ["mha", "mla-absorb"], "context": [64, 4096],
                 "platforms": ["h100-like"]}  # fmt: skip
        keyed = SweepSpec.from_dict({"sweeps": [block]}).keyed_points()
        assert run_analytic_batch(keyed, store) == (4, 0)
        assert [store.get(k) is not None for k in keyed] == [True] * 4
        assert {c: store.get(next(iter(keyed)))[c] for c in ROW_COLUMNS} == run_point(next(iter(keyed.values())))


def test_derived_polynomials_are_kept_on_disk_and_rederived_when_unreadable(tmp_path, monkeypatch):
    """A later process reads a group's polynomials from the cache folder instead of deriving them (the rows are the
    same); an unreadable file is derived again; `STREAM_MLA_CACHE=off` keeps nothing."""
    from stream_mla.sweeps import fast

    pts = [SweepPoint(model="deepseek-v2-lite", scheme=s, context=c, batch=b, platform="h100-like")
           for s in ("mha", "mla-absorb") for c in (512, 3000) for b in (1, 3)]  # fmt: skip
    expected = [run_point(p) for p in pts]
    monkeypatch.setenv("STREAM_MLA_CACHE", str(tmp_path))
    polynomial.pieces.cache_clear()
    fast.SHARED.clear()
    assert analytic_rows(pts) == expected
    files = sorted((tmp_path / fast.POLY_FOLDER).rglob("*.pickle"))
    assert len(files) == 2  # one group per scheme

    def no_derivation(group):
        raise AssertionError("derived again although its polynomials are on disk")

    polynomial.pieces.cache_clear()
    fast.SHARED.clear()
    monkeypatch.setattr(polynomial, "derive", no_derivation)
    assert analytic_rows(pts) == expected  # read from disk
    monkeypatch.undo()
    monkeypatch.setenv("STREAM_MLA_CACHE", str(tmp_path))
    for f in files:
        f.write_bytes(b"not a pickle")
    polynomial.pieces.cache_clear()
    fast.SHARED.clear()
    assert analytic_rows(pts) == expected  # derived again, and written back whole
    assert all(f.read_bytes() != b"not a pickle" for f in files)
    monkeypatch.setenv("STREAM_MLA_CACHE", "off")
    polynomial.pieces.cache_clear()
    fast.SHARED.clear()
    assert analytic_rows(pts[:2]) == expected[:2]
