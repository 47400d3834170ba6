"""Attention-layer model specs: one validated record per layer shape, DeepSeek presets, HF config reader.

Field names follow the symbols of attention-schemes.md §1.1. A spec without `kv_lora_rank` is a plain
MHA/GQA model: only the `mha`/`gqa`/`mqa` schemes apply to it.
"""

from pathlib import Path
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from stream_mla.errors import SpecError, first_error, read_document

Precision = Literal["bf16", "fp32", "int8", "fp8"]
BYTES_PER_ELEMENT: dict[str, int] = {"bf16": 2, "fp32": 4, "int8": 1, "fp8": 1}


class ModelSpec(BaseModel):
    """One attention layer (all layers of the supported models are identical)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    d_model: PositiveInt = Field(description="hidden width d (hidden_size)")
    heads: PositiveInt = Field(description="query heads h (num_attention_heads)")
    kv_heads: PositiveInt | None = Field(None, description="K/V heads n_kv of the MHA/GQA baseline; default h")
    head_dim: PositiveInt | None = Field(None, description="baseline head width d_h; default v_head_dim or d/h")
    q_lora_rank: int = Field(0, ge=0, description="query latent rank d_q; 0 = no query compression")
    kv_lora_rank: PositiveInt | None = Field(None, description="KV latent rank d_c; None = not an MLA model")
    qk_nope_head_dim: PositiveInt | None = Field(None, description="per-head non-RoPE q/k width d_n")
    qk_rope_head_dim: PositiveInt | None = Field(None, description="decoupled RoPE q/k width d_r")
    v_head_dim: PositiveInt | None = Field(None, description="per-head value width d_v")
    layers: PositiveInt = Field(1, description="number of layers N")
    precision: Precision = Field("bf16", description="element precision of weights, caches and activations")

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(f"kv_heads={self.kv_heads} must divide heads={self.heads}")
        mla = ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        if self.kv_lora_rank is not None:
            missing = [f for f in mla if getattr(self, f) is None]
            if missing:
                raise ValueError(f"an MLA model (kv_lora_rank set) needs {', '.join(missing)}")
        elif self.head_dim is None and self.d_model % self.heads:
            raise ValueError(f"heads={self.heads} must divide d_model={self.d_model} (or set head_dim)")
        return self

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def n_kv(self) -> int:
        return self.kv_heads or self.heads

    @property
    def d_h(self) -> int:
        """Baseline head width: explicit head_dim, else v_head_dim (DeepSeek, §3), else d/h."""
        return self.head_dim or self.v_head_dim or self.d_model // self.heads

    @property
    def q_in(self) -> int:
        return self.q_lora_rank or self.d_model

    @property
    def bytes_per_element(self) -> int:
        return BYTES_PER_ELEMENT[self.precision]


PRESETS: dict[str, ModelSpec] = {
    "deepseek-v3": ModelSpec(
        name="deepseek-v3", d_model=7168, heads=128, kv_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, layers=61,
    ),
    "deepseek-v2": ModelSpec(
        name="deepseek-v2", d_model=5120, heads=128, kv_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, layers=60,
    ),
    "deepseek-v2-lite": ModelSpec(
        name="deepseek-v2-lite", d_model=2048, heads=16, kv_heads=16, q_lora_rank=0, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, layers=27,
    ),
}  # fmt: skip

# Hugging Face config.json field -> ModelSpec field (attention-schemes.md §1.1).
HF_FIELDS = {
    "hidden_size": "d_model",
    "num_attention_heads": "heads",
    "num_key_value_heads": "kv_heads",
    "head_dim": "head_dim",
    "q_lora_rank": "q_lora_rank",
    "kv_lora_rank": "kv_lora_rank",
    "qk_nope_head_dim": "qk_nope_head_dim",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim",
    "num_hidden_layers": "layers",
}
HF_REQUIRED = ("hidden_size", "num_attention_heads", "num_hidden_layers")


def validate(fields: dict, source: str) -> ModelSpec:
    try:
        return ModelSpec(**fields)
    except pydantic.ValidationError as exc:
        raise first_error(exc, prefix=f"{source}: ") from None


def from_hf_config(path: str | Path) -> ModelSpec:
    """Read a Hugging Face config.json (DeepSeek-V2/V3 or a Llama-style MHA/GQA model)."""
    path = Path(path)
    raw = read_document(path, "--hf-config")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: --hf-config must be a JSON object of field: value")
    missing = [k for k in HF_REQUIRED if raw.get(k) is None]
    if missing:
        raise SpecError(f"{path}: missing field {missing[0]} (required: {', '.join(HF_REQUIRED)})")
    fields = {ours: raw[hf] for hf, ours in HF_FIELDS.items() if raw.get(hf) is not None}
    if "kv_lora_rank" not in fields:  # a plain MHA/GQA model: the MLA head dims of its config do not apply
        for key in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "q_lora_rank"):
            fields.pop(key, None)
    return validate({"name": raw.get("model_type", path.stem), **fields}, str(path))


def resolve(model: str | None = None, hf_config: str | Path | None = None) -> ModelSpec:
    """A preset by name, or a config file; exactly one of the two."""
    if hf_config is not None:
        return from_hf_config(hf_config)
    if model not in PRESETS:
        raise SpecError(f"--model: unknown preset {model!r} (allowed: {', '.join(PRESETS)})")
    return PRESETS[model]
