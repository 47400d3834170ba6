"""The scheme registry: one record per attention scheme, read by workloads, counts, sweeps, figures, claims, CLI
and tests. Adding a scheme is one record here, one builder in `schemes.py` and its closed forms in the tests.

Record order is the display order (legends, tables, figure panels); it is also the export order of the reference
set. Model families are those of `ModelSpec.family`: mla, mha, gqa, mqa.
"""

from collections.abc import Callable
from dataclasses import dataclass

from stream_mla.models import ModelSpec
from stream_mla.workloads import schemes as builders
from stream_mla.workloads.graph import GraphBuilder

Builder = Callable[[GraphBuilder, ModelSpec, str, builders.Shape], str]  # (b, layer model, x, shape) -> output
CoreBuilder = Callable[[GraphBuilder, ModelSpec, builders.Shape], str]  # the attention core alone
ALL_FAMILIES = frozenset({"mla", "dsa", "mha", "gqa", "mqa"})
MLA_FAMILIES = frozenset({"mla", "dsa"})  # a DSA model is an MLA model with an indexer: dense MLA schemes apply


@dataclass(frozen=True)
class Scheme:
    name: str
    label: str  # legend and table label
    short: str  # abbreviation inside dense claim text
    color: str
    family: str  # "baseline" (MHA/GQA/MQA layer of the model's d and h) or "mla" (the model's own MLA layer)
    cache: str  # what the KV cache holds per token and layer
    builder: Builder
    core: CoreBuilder
    applies_to: frozenset[str]  # model families it can be exported for
    default_for: frozenset[str] = frozenset()  # model families whose default scheme this is
    phases: tuple[str, ...] = ("decode", "prefill")
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def is_baseline(self) -> bool:
        return self.family == "baseline"


def _mla(name: str, label: str, short: str, color: str, cache: str, builder: Builder, core: CoreBuilder,
         **kw) -> Scheme:  # fmt: skip
    kw.setdefault("applies_to", MLA_FAMILIES)
    return Scheme(name, label, short, color, "mla", cache, builder, core, **kw)


def _baseline(name: str, label: str, color: str, cache: str, **kw) -> Scheme:
    return Scheme(name, label, name, color, "baseline", cache, builders.build_mha, builders.core_mha, ALL_FAMILIES,
                  **kw)  # fmt: skip


_LATENT = "latent c_KV (d_c) + shared RoPE key (d_r)"
REGISTRY: dict[str, Scheme] = {
    s.name: s
    for s in (
        _baseline("mha", "mha", "#d62728", "K, V per query head (2·h·d_h)", default_for=frozenset({"mha"}),
                  description="multi-head attention, n_kv = h (§3)"),
        _baseline("gqa", "gqa", "#e377c2", "K, V per K/V head (2·n_kv·d_h)", default_for=frozenset({"gqa"}),
                  description="grouped-query attention, n_kv from the model or --kv-heads (§3)"),
        _baseline("mqa", "mqa", "#7f7f7f", "one K, V head (2·d_h)", default_for=frozenset({"mqa"}),
                  description="multi-query attention, n_kv = 1 (§3)"),
        _mla("mla-naive", "naive", "naive", "#ff7f0e", "up-projected K, V and per-head RoPE key (h·(d_n+d_r+d_v))",
             builders.build_mla_naive, builders.core_naive,
             description="MLA with the up-projected K/V cached (§5.4)"),
        _mla("mla-absorb", "absorb", "absorb", "#1f77b4", _LATENT, builders.build_mla_absorb, builders.core_latent,
             default_for=frozenset({"mla"}), aliases=("mla-reuse",),
             description="W_UK absorbed into the query, attention in latent space; the paper's reuse (§5.2)"),
        _mla("mla-recompute", "recompute", "rc", "#2ca02c", _LATENT, builders.build_mla_recompute,
             builders.core_recompute, description="K and V re-projected from the latent cache every step (§5.3)"),
        _mla("mla-merged", "merged", "merged", "#9467bd", _LATENT, builders.build_mla_merged, builders.core_latent,
             description="W_QK = W_UQ·W_UKᵀ and W_VO = W_UV·W_O precomputed (§5.5)"),
        _mla("mla-merged-per-step", "merged per-step", "per-step", "#8c564b", _LATENT,
             lambda *a: builders.build_mla_merged(*a, per_step=True), builders.core_latent,
             description="the merged weights recomputed every step (§5.5)"),
        _mla("mla-sparse", "sparse (DSA)", "sparse", "#17becf", f"{_LATENT} + fp8 indexer key (d_i)",
             builders.build_mla_sparse, builders.core_sparse, applies_to=frozenset({"dsa"}),
             default_for=frozenset({"dsa"}), phases=("decode",),
             description="DeepSeek-V3.2 sparse attention: lightning indexer over all L keys, absorbed MLA over the "
             "index_topk selected latents"),
    )
}  # fmt: skip
ALIASES: dict[str, str] = {a: s.name for s in REGISTRY.values() for a in s.aliases}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def allowed() -> str:
    return ", ".join((*NAMES, *ALIASES))


def canonical(name: str) -> str:
    """The registered name of a scheme or alias; ValueError (for pydantic validators) naming the allowed ones."""
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise ValueError(f"unknown scheme {name!r} (allowed: {allowed()})")
    return name


def get(name: str) -> Scheme:
    return REGISTRY[canonical(name)]


def default_scheme(model: ModelSpec) -> str:
    """The scheme a model is exported with when none is given: its own attention (MLA -> absorb, GQA -> gqa, ...)."""
    return next(s.name for s in REGISTRY.values() if model.family in s.default_for)


def applicable(model: ModelSpec) -> tuple[str, ...]:
    return tuple(s.name for s in REGISTRY.values() if model.family in s.applies_to)


def check_applies(scheme: str, model: ModelSpec) -> None:
    """ValueError (for pydantic validators) when a scheme cannot be exported for this model."""
    s = get(scheme)
    if model.family not in s.applies_to:
        need = (
            "an MLA model (kv_lora_rank set)"
            if s.applies_to == MLA_FAMILIES
            else f"a {'/'.join(sorted(s.applies_to))} model"
        )
        raise ValueError(f"scheme {s.name} needs {need}; {model.name} is {model.family} "
                         f"(allowed: {', '.join(applicable(model))})")  # fmt: skip


def label(name: str) -> str:
    return REGISTRY[name].label if name in REGISTRY else name


def short(name: str) -> str:
    return REGISTRY[name].short if name in REGISTRY else name


def color(name: str) -> str:
    return REGISTRY[name].color if name in REGISTRY else "k"
