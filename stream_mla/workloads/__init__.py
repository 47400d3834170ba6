"""Attention workloads: a validated spec of one exported layer and the ONNX export."""

from pathlib import Path
from typing import Literal

import onnx
import pydantic
from pydantic import BaseModel, ConfigDict, PositiveInt, field_validator, model_validator

from stream_mla.errors import SpecError, first_error
from stream_mla.models import ModelSpec
from stream_mla.workloads import schemes
from stream_mla.workloads.graph import GraphBuilder
from stream_mla.workloads.weights import graph_factors

Phase = Literal["decode", "prefill"]
ALIASES = {"mla-reuse": "mla-absorb"}  # the paper's name for weight absorption
BASELINES = ("mha", "gqa", "mqa")
MLA_SCHEMES = ("mla-absorb", "mla-recompute", "mla-naive", "mla-merged", "mla-merged-per-step")
SCHEMES = BASELINES + MLA_SCHEMES


class WorkloadSpec(BaseModel):
    """One attention layer at one runtime point: what `stream-mla export` writes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelSpec
    scheme: str
    phase: Phase = "decode"
    batch: PositiveInt = 1
    context: PositiveInt  # decode: L keys attended (the new token's included); prefill: S tokens
    kv_heads: PositiveInt | None = None  # gqa only: override the model's K/V heads

    @field_validator("scheme", mode="before")
    @classmethod
    def _scheme(cls, value: str) -> str:
        value = ALIASES.get(value, value)
        if value not in SCHEMES:
            raise ValueError(f"unknown scheme {value!r} (allowed: {', '.join(SCHEMES + tuple(ALIASES))})")
        return value

    @model_validator(mode="after")
    def _applies(self) -> "WorkloadSpec":
        if self.scheme in MLA_SCHEMES and not self.model.is_mla:
            raise ValueError(f"scheme {self.scheme} needs an MLA model (kv_lora_rank set), {self.model.name} has none")
        if self.kv_heads is not None and (self.scheme != "gqa" or self.model.heads % self.kv_heads):
            raise ValueError(f"kv_heads={self.kv_heads} applies to scheme gqa only and must divide {self.model.heads}")
        return self

    @property
    def group_kv_heads(self) -> int:
        """K/V heads of the baselines: h for mha, 1 for mqa, the model's (or overridden) n_kv for gqa."""
        return {"mha": self.model.heads, "mqa": 1}.get(self.scheme) or self.kv_heads or self.model.n_kv

    @property
    def layer_model(self) -> ModelSpec:
        """The layer actually built: the model itself for MLA schemes; for the baselines, the plain MHA/GQA
        layer with the model's d and h, head width d_h and group_kv_heads K/V heads (§3)."""
        if self.scheme in MLA_SCHEMES:
            return self.model
        m = self.model
        return ModelSpec(name=m.name, d_model=m.d_model, heads=m.heads, kv_heads=self.group_kv_heads,
                         head_dim=m.d_h, layers=m.layers, precision=m.precision)  # fmt: skip

    @property
    def slug(self) -> str:
        """File stem, e.g. deepseek-v3_mla-absorb_decode_b1_l4096_bf16."""
        axis = "l" if self.phase == "decode" else "s"
        kv = f"_kv{self.group_kv_heads}" if self.scheme == "gqa" else ""
        m = self.model
        return f"{m.name}_{self.scheme}{kv}_{self.phase}_b{self.batch}_{axis}{self.context}_{m.precision}"


def make_spec(**fields) -> WorkloadSpec:
    try:
        return WorkloadSpec(**fields)
    except pydantic.ValidationError as exc:
        raise first_error(exc, as_flags=True) from None


def build(spec: WorkloadSpec, seed: int | None = None) -> onnx.ModelProto:
    """The layer's ONNX graph; seed=None gives shapes mode (data-less weights), else numeric fp32 weights."""
    m = spec.layer_model
    if seed is not None and m.precision != "fp32":
        raise SpecError(f"--precision: random weights are computed in fp32 (got {m.precision}; allowed: fp32)")
    b = GraphBuilder(m.precision, graph_factors(m, seed) if seed is not None else None)
    queries = 1 if spec.phase == "decode" else spec.context
    shape = schemes.Shape(batch=spec.batch, queries=queries, keys=spec.context, decode=spec.phase == "decode")
    x = b.input("x", (spec.batch, queries, m.d_model))
    builders = {
        "mla-absorb": schemes.build_mla_absorb,
        "mla-recompute": schemes.build_mla_recompute,
        "mla-naive": schemes.build_mla_naive,
        "mla-merged": schemes.build_mla_merged,
        "mla-merged-per-step": lambda *a: schemes.build_mla_merged(*a, per_step=True),
    }
    if spec.scheme in BASELINES:
        y = schemes.build_mha(b, m, x, shape, spec.group_kv_heads)
    else:
        y = builders[spec.scheme](b, m, x, shape)
    meta = {
        "spec": spec.model_dump(mode="json"),
        "seed": seed,
        "bytes_per_element": m.bytes_per_element,
        "phase": spec.phase,
    }
    return b.build(y, spec.slug.replace("-", "_").replace(".", "_"), meta)


def export(spec: WorkloadSpec, path: str | Path, seed: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(spec, seed), path)
    return path
