"""The faster twins of Stream helpers (`engines/stream_speed.py`) give exactly what Stream's own functions give."""

import random

import pytest
import stream.plugins as plugins
import stream.workload.utils as utils
from xdsl.ir.affine import AffineExpr

from stream_mla.engines import stream_speed


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
    stream_speed.install()
    original = stream_speed._installed["original"]
    assert utils.affine_coefficients is stream_speed.affine_coefficients
    rng = random.Random(7)
    forms = {"ok": 0, "error": 0}
    for _ in range(3000):
        n = rng.randint(1, 12)
        expr = _random_expr(rng, n, rng.randint(0, 6))
        want = _outcome(original, expr, n)
        assert _outcome(stream_speed.affine_coefficients, expr, n) == want, str(expr)
        forms[want[0]] += 1
    assert forms["ok"] > 2000 and forms["error"] > 20  # both kinds really were exercised


@pytest.mark.parametrize("text", ["d0 * 64 + d1 + 3", "(d2 + d0) * 8 - d1 * 2"])
def test_affine_coefficients_by_hand(text):
    d0, d1, d2 = (AffineExpr.dimension(i) for i in range(3))
    expr = {"d0 * 64 + d1 + 3": d0 * 64 + d1 + 3, "(d2 + d0) * 8 - d1 * 2": (d2 + d0) * 8 - d1 * 2}[text]
    want = {"d0 * 64 + d1 + 3": (3, [64, 1, 0]), "(d2 + d0) * 8 - d1 * 2": (0, [8, -2, 8])}[text]
    assert stream_speed.affine_coefficients(expr, 3) == want


def test_distribution_names_are_streams_own():
    stream_speed.install()
    original = stream_speed._installed["distribution_of"]
    eps = plugins._entry_points("stream.core_cost_backends")
    assert eps  # Stream's own backends are declared
    for ep in eps:
        assert stream_speed.distribution_of(ep) == original(ep) == stream_speed.distribution_of(ep)
