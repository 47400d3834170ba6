"""Attention workloads: a validated spec of one exported layer and the ONNX export."""

from pathlib import Path
from typing import Literal

import onnx
import pydantic
from pydantic import BaseModel, ConfigDict, PositiveInt, field_validator, model_validator

from stream_mla.errors import SpecError, first_error
from stream_mla.models import BYTES_PER_ELEMENT, ModelSpec, Precision
from stream_mla.workloads import registry, schemes
from stream_mla.workloads.graph import GraphBuilder
from stream_mla.workloads.weights import graph_factors

Phase = Literal["decode", "prefill"]
Part = Literal["layer", "core"]


def compute_precision(precisions: dict[str, str]) -> str:
    """The MAC operand type of a layer: its widest stored type (a narrower operand is widened on the way in, as
    W8A16 or an fp8 cache under bf16 attention run); on a tie in width, the activations' type."""
    order = (precisions["activations"], precisions["weights"], precisions["kv_cache"])
    return max(order, key=BYTES_PER_ELEMENT.__getitem__)


class WorkloadSpec(BaseModel):
    """One attention layer at one runtime point: what `stream-mla export` writes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelSpec
    scheme: str
    phase: Phase = "decode"
    batch: PositiveInt = 1
    context: PositiveInt  # decode: L cache entries (the new tokens' included); prefill: S tokens
    queries: PositiveInt = 1  # decode: new tokens per sequence and step (s_q; MTP, speculative verification)
    part: Part = "layer"  # layer: X to the output projection; core: the attention kernel alone
    window: PositiveInt | None = None  # sliding-window attention span W; None: the model's (HF sliding_window)
    # split-KV decode (flash-decoding): the T cache entries read in C chunks of ceil(T/C), each with its own softmax
    # statistics, then combined (workloads/split_kv.py); None or 1: the plain graph. Where C does not divide T, the
    # last chunk's empty slots are read and masked as a paged kernel does (`pad_keys`); otherwise the plain graph's
    # MACs and DRAM bytes.
    kv_chunks: PositiveInt | None = None
    kv_heads: PositiveInt | None = None  # gqa only: override the model's K/V heads
    # Precision per tensor class; None follows `precision`, which itself defaults to the model's (its torch_dtype).
    # Callers with a platform fill unset ones with its native precision first (`on_platform`).
    precision: Precision | None = None  # weights (and the default of the other two)
    kv_precision: Precision | None = None  # KV cache read and written
    act_precision: Precision | None = None  # layer input, output and every intermediate

    @field_validator("scheme", mode="before")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return registry.canonical(value)

    @model_validator(mode="after")
    def _applies(self) -> "WorkloadSpec":
        registry.check_applies(self.scheme, self.model)
        h = self.model.heads
        if self.kv_heads is not None and (self.scheme != "gqa" or h % self.kv_heads):
            raise ValueError(f"kv_heads={self.kv_heads} applies to scheme gqa only and must divide {h}")
        if self.scheme == "gqa" and self.group_kv_heads == h:  # would silently be MHA
            raise ValueError(f"--kv-heads: scheme gqa on {self.model.name} (n_kv = h = {h}) needs --kv-heads, "
                             f"a divisor of {h} below {h}")  # fmt: skip
        if self.phase not in self.scheme_record.phases:
            raise ValueError(f"--phase: scheme {self.scheme} is modelled for {', '.join(self.scheme_record.phases)} "
                             f"only (got {self.phase})")  # fmt: skip
        if self.scheme == "mla-sparse" and self.attention_window:
            raise ValueError("--window: mla-sparse selects its keys with the indexer; a sliding window does not apply")
        if self.phase == "prefill" and self.queries != 1:
            raise ValueError(f"--queries: {self.queries} applies to decode only (prefill's queries are its S tokens)")
        if self.queries > self.context:
            raise ValueError(f"--queries: {self.queries} new tokens need a cache of at least as many entries "
                             f"(--context {self.context})")  # fmt: skip
        if self.chunks > 1 and self.phase != "decode":
            raise ValueError(f"--kv-chunks: {self.kv_chunks} applies to decode only (split-KV reads a cache)")
        if self.chunks > self.keys:
            raise ValueError(f"--kv-chunks: {self.kv_chunks} chunks exceed the {self.keys} cache entries a step reads "
                             f"(allowed: 1 to {self.keys})")  # fmt: skip
        return self

    @property
    def chunks(self) -> int:
        """C: the split-KV chunks of the graph (1: the plain graph)."""
        return self.kv_chunks or 1

    @property
    def attention_window(self) -> int | None:
        return self.window or self.model.sliding_window

    @property
    def query_tokens(self) -> int:
        """Sq: the tokens whose queries the layer computes."""
        return self.queries if self.phase == "decode" else self.context

    @property
    def keys(self) -> int:
        """T: the cache entries a decode step reads (a window W caps them at the W + Q - 1 its queries see), or the
        S tokens of prefill."""
        w = self.attention_window
        return min(self.context, w + self.queries - 1) if w and self.phase == "decode" else self.context

    @property
    def graph_keys(self) -> int:
        """The keys the graph reads: T, or with C split-KV chunks C * ceil(T / C) (the last chunk padded)."""
        return self.chunks * -(-self.keys // self.chunks)

    @property
    def pad_keys(self) -> int:
        """Padded cache slots per sequence and K/V head: read and masked, never attended."""
        return self.graph_keys - self.keys

    @property
    def precisions(self) -> dict[str, str]:
        """Element precision per tensor class (graph.TENSOR_CLASSES)."""
        w = self.precision or self.model.precision
        return {"weights": w, "kv_cache": self.kv_precision or w, "activations": self.act_precision or w}

    @property
    def compute_precision(self) -> str:
        return compute_precision(self.precisions)

    def on_platform(self, native: str) -> "WorkloadSpec":
        """The workload as run on a platform: a precision left unset follows the platform's native one. Every
        class is then explicit, so equal workloads dump (and hash) equally however they were written."""
        p = (self if self.precision else self.model_copy(update={"precision": native})).precisions
        fields = {"precision": p["weights"], "kv_precision": p["kv_cache"], "act_precision": p["activations"]}
        return self.model_copy(update=fields)

    @property
    def scheme_record(self) -> registry.Scheme:
        return registry.REGISTRY[self.scheme]

    @property
    def group_kv_heads(self) -> int:
        """K/V heads of the baselines: h for mha, 1 for mqa, the model's (or overridden) n_kv for gqa."""
        return {"mha": self.model.heads, "mqa": 1}.get(self.scheme) or self.kv_heads or self.model.n_kv

    @property
    def layer_model(self) -> ModelSpec:
        """The layer actually built: the model itself for MLA schemes; for the baselines, the plain MHA/GQA
        layer with the model's d and h, head width d_h and group_kv_heads K/V heads (§3)."""
        if not self.scheme_record.is_baseline:
            return self.model
        m = self.model
        return ModelSpec(name=m.name, d_model=m.d_model, heads=m.heads, kv_heads=self.group_kv_heads,
                         head_dim=m.d_h, layers=m.layers, precision=m.precision)  # fmt: skip

    @property
    def slug(self) -> str:
        """File stem, e.g. deepseek-v3_mla-absorb_decode_b1_l4096_bf16."""
        axis = "l" if self.phase == "decode" else "s"
        kv = f"_kv{self.group_kv_heads}" if self.scheme == "gqa" else ""
        p = self.precisions
        prec = p["weights"] + "".join(f"_{tag}{p[c]}" for tag, c in (("kv", "kv_cache"), ("a", "activations"))
                                      if p[c] != p["weights"])  # fmt: skip
        extra = "".join(tag for tag, on in ((f"_q{self.queries}", self.queries > 1), ("_core", self.part == "core"),
                                            (f"_w{self.window}", self.window),
                                            (f"_c{self.chunks}", self.chunks > 1)) if on)  # fmt: skip
        return f"{self.model.name}_{self.scheme}{kv}_{self.phase}{extra}_b{self.batch}_{axis}{self.context}_{prec}"


def make_spec(**fields) -> WorkloadSpec:
    try:
        return WorkloadSpec(**fields)
    except pydantic.ValidationError as exc:
        raise first_error(exc, as_flags=True) from None


def build(spec: WorkloadSpec, seed: int | None = None, batch_apart: bool = False) -> onnx.ModelProto:
    """The layer's ONNX graph; seed=None gives shapes mode (data-less weights), else numeric fp32 weights.
    batch_apart: a split-KV graph with B and the K/V heads as separate axes (rank-5 products: what Stream can fuse at
    B > 1; ZigZag parses rank <= 4 only, so the default export keeps them merged; split_kv.py)."""
    m = spec.layer_model
    if seed is not None and set(spec.precisions.values()) != {"fp32"}:
        got = "/".join(dict.fromkeys(spec.precisions.values()))
        raise SpecError(f"--precision: random weights are computed in fp32 (got {got}; allowed: fp32)")
    b = GraphBuilder(spec.precisions, graph_factors(m, seed) if seed is not None else None)
    shape = schemes.Shape(batch=spec.batch, queries=spec.query_tokens, keys=spec.graph_keys,
                          decode=spec.phase == "decode", chunks=spec.chunks, batch_apart=batch_apart,
                          pad=spec.pad_keys)  # fmt: skip
    if spec.part == "core":
        y = spec.scheme_record.core(b, m, shape)
    else:
        y = spec.scheme_record.builder(b, m, b.input("x", (spec.batch, shape.queries, m.d_model), "activations"), shape)
    if spec.chunks > 1 and "combine" not in {n.name for n in b.nodes}:
        raise SpecError(f"--kv-chunks: scheme {spec.scheme} has no split-KV form (allowed: 1)")
    meta = {
        "spec": spec.model_dump(mode="json"),
        "seed": seed,
        "precision": spec.precisions,
        "bytes_per_element": BYTES_PER_ELEMENT[spec.compute_precision],  # the widest operand: footprints
        "phase": spec.phase,
        # what the dense attention block stands for: Sq queries at the end of `context` tokens, over `keys`
        # graph keys (`pad` of them masked padding), each seeing at most `window` of them (causal) -> the counter's
        # exact query-key pairs
        "attention": {
            "queries": shape.queries,
            "keys": shape.keys,
            "pad": spec.pad_keys,
            "context": spec.context,
            "window": spec.attention_window,
        },
    }
    return b.build(y, spec.slug.replace("-", "_").replace(".", "_"), meta)


def export(spec: WorkloadSpec, path: str | Path, seed: int | None = None, batch_apart: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(spec, seed, batch_apart), path)
    return path
