"""Attention-layer model specs: one validated record per layer shape, model presets, HF config reader.

Field names follow the symbols of attention-schemes.md §1.1. A spec without `kv_lora_rank` is a plain
MHA/GQA/MQA model (`family`): only the baseline schemes apply to it.
"""

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from stream_mla.errors import SpecError, excerpt, first_error, read_document, reject_bools

Precision = Literal["bf16", "fp32", "int8", "fp8"]
BYTES_PER_ELEMENT: dict[str, int] = {"bf16": 2, "fp32": 4, "int8": 1, "fp8": 1}
Family = Literal["mla", "dsa", "mqa", "mha", "gqa"]  # dsa: MLA with DeepSeek sparse attention's indexer
DSA_FIELDS = ("index_n_heads", "index_head_dim", "index_topk")
SAFE_NAME = r"^[A-Za-z0-9_.\-]+$"  # names become file stems (WorkloadSpec.slug)

# Documented maxima of user sizes. Far above any real model or serving point, and low enough that every count
# of a decode step (MACs, bytes) fits the results store's 64-bit integers and the ONNX graph's int64 shapes; a
# larger value is a typo (`--context 10**21`), refused with one line instead of overflowing later.
MAX_BATCH = 2**16
MAX_CONTEXT = 2**24  # tokens: context L, prefill length S, queries per step, sliding window
MAX_WIDTH = 2**18  # d_model and the latent ranks
MAX_HEADS = 2**12
MAX_HEAD_DIM = 2**14
MAX_LAYERS = 2**14
Batch = Annotated[int, Field(ge=1, le=MAX_BATCH)]
Tokens = Annotated[int, Field(ge=1, le=MAX_CONTEXT)]
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Heads = Annotated[int, Field(ge=1, le=MAX_HEADS)]
HeadDim = Annotated[int, Field(ge=1, le=MAX_HEAD_DIM)]
MAX_COUNT = 2**62  # MACs and bytes: the store's INTEGER and ONNX's int64 shapes hold 2**63, with 2x to spare


class ModelSpec(BaseModel):
    """One attention layer (all layers of the supported models are identical)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field("custom", pattern=SAFE_NAME, max_length=100, description="model name; the stem of export "
                      "file names")  # fmt: skip
    d_model: Width = Field(description="hidden width d (hidden_size)")
    heads: Heads = Field(description="query heads h (num_attention_heads)")
    kv_heads: Heads | None = Field(None, description="K/V heads n_kv of the MHA/GQA baseline; default h")
    head_dim: HeadDim | None = Field(None, description="baseline head width d_h; default v_head_dim or d/h")
    q_lora_rank: int = Field(0, ge=0, le=MAX_WIDTH, description="query latent rank d_q; 0 = no query compression")
    kv_lora_rank: Width | None = Field(None, description="KV latent rank d_c; None = not an MLA model")
    qk_nope_head_dim: HeadDim | None = Field(None, description="per-head non-RoPE q/k width d_n")
    qk_rope_head_dim: HeadDim | None = Field(None, description="decoupled RoPE q/k width d_r")
    v_head_dim: HeadDim | None = Field(None, description="per-head value width d_v")
    layers: int = Field(1, ge=1, le=MAX_LAYERS, description="number of layers N")
    precision: Precision = Field("bf16", description="element precision of weights, caches and activations")
    sliding_window: Tokens | None = Field(
        None, description="sliding attention window W in tokens (sliding_window); None = full attention"
    )
    index_n_heads: Heads | None = Field(None, description="DeepSeek sparse attention: lightning-indexer heads")
    index_head_dim: HeadDim | None = Field(None, description="DSA: indexer head width (its key cache per token)")
    index_topk: Tokens | None = Field(None, description="DSA: cached tokens each query attends to")

    _no_bools = model_validator(mode="before")(reject_bools)  # YAML's `yes`/`true` are not 1

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(f"kv_heads={self.kv_heads} must divide heads={self.heads}")
        mla = ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        if self.kv_lora_rank is not None:
            missing = [f for f in mla if getattr(self, f) is None]
            if missing:
                raise ValueError(f"an MLA model (kv_lora_rank set) needs {', '.join(missing)}")
        dsa = [getattr(self, f) is None for f in DSA_FIELDS]
        if any(dsa) != all(dsa) or (not any(dsa) and not self.is_mla):
            raise ValueError(f"DeepSeek sparse attention needs an MLA model and all of {', '.join(DSA_FIELDS)}")
        if not self.is_mla and self.head_dim is None and self.d_model % self.heads:
            raise ValueError(f"heads={self.heads} must divide d_model={self.d_model} (or set head_dim)")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_window(self, handler) -> dict:
        # Exported graphs and sweep keys embed model_dump(): a model without a window dumps as it did before the
        # field existed, so the committed reference graphs and stored sweep results stay valid.
        out = handler(self)
        for field in ("sliding_window", *DSA_FIELDS):
            if getattr(self, field) is None:
                out.pop(field, None)
        return out

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def family(self) -> Family:
        """The model's own attention: dsa (MLA with an indexer) or mla if kv_lora_rank is set, else by K/V heads
        (1: mqa, h: mha, else gqa)."""
        if self.is_mla:
            return "dsa" if self.index_topk else "mla"
        if self.n_kv == 1:
            return "mqa"
        return "mha" if self.n_kv == self.heads else "gqa"

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
    "sliding_window": "sliding_window",
    "index_n_heads": "index_n_heads",
    "index_head_dim": "index_head_dim",
    "index_topk": "index_topk",
}
HF_REQUIRED = ("hidden_size", "num_attention_heads", "num_hidden_layers")
MLA_REQUIRED = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
# Supported model_type -> fields it must have beyond HF_REQUIRED (an MLA type without them would be misread as MHA).
HF_MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "deepseek_v2": MLA_REQUIRED,
    "deepseek_v3": MLA_REQUIRED,
    "deepseek_v32": (*MLA_REQUIRED, "index_n_heads", "index_head_dim", "index_topk"),  # V3.2: V3 + DSA indexer
    "kimi_k2": MLA_REQUIRED,  # Kimi K2: DeepSeek-V3 architecture under its own model_type
    "llama": (),
    "mistral": (),
    "qwen2": (),
    "falcon": (),
}
# What a config.json that leaves a key out means: the default of its model_type's config class in transformers
# (a key given as null is the class's None, not its default). DeepseekV2Config and DeepseekV3Config: q_lora_rank
# 1536 (their MLA attention reads no num_key_value_heads: our MHA baseline keeps h); Kimi K2 and DeepSeek-V3.2 are
# DeepSeek-V3's architecture, read as DeepseekV3Config (serving stacks register KimiK2Config and DeepseekV32Config
# as its subclasses). LlamaConfig: K/V heads h, head_dim d/h (ModelSpec's own defaults). MistralConfig:
# num_key_value_heads 8, sliding_window 4096. Qwen2Config: num_key_value_heads 32, use_sliding_window False,
# sliding_window 4096, max_window_layers 28. FalconConfig: `_falcon`. RoPE scaling changes no count: not read.
# PretrainedConfig's torch_dtype defaults to None (unstated): a config without one is costed in ModelSpec's bf16.
HF_DEFAULTS: dict[str, dict[str, object]] = {
    **dict.fromkeys(("deepseek_v2", "deepseek_v3", "deepseek_v32", "kimi_k2"), {"q_lora_rank": 1536}),
    "llama": {},
    "mistral": {"num_key_value_heads": 8, "sliding_window": 4096},
    "qwen2": {"num_key_value_heads": 32, "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28},
    "falcon": {},
}
# Keys of HF_FIELDS a model_type's class does not read as we do: DeepSeek's head_dim is its RoPE width (the class
# sets head_dim = qk_rope_head_dim), Falcon's is the property d/h, and only Mistral and Qwen2 attend in a window
# (Llama's, Falcon's and DeepSeek's attention read no sliding_window).
HF_IGNORED: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("deepseek_v2", "deepseek_v3", "deepseek_v32", "kimi_k2"), ("head_dim", "sliding_window")),
    "llama": ("sliding_window",),
    "falcon": ("head_dim", "sliding_window"),
}
# Falcon's older (RW remote-code) field names -> the names used above; the canonical name wins if both are set.
FALCON_ALIASES = {"n_embed": "hidden_size", "n_head": "num_attention_heads", "n_layer": "num_hidden_layers",
                  "n_head_kv": "num_kv_heads"}  # fmt: skip
# float16 maps to bf16: both are 2-byte types, and costs depend only on the element size.
HF_DTYPES = {"bfloat16": "bf16", "float16": "bf16", "float32": "fp32"}
CONFIG_DIR = Path(__file__).with_name("model_configs")
SHIPPED_PRESETS = ("kimi-k2", "llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "mistral-7b")


def validate(fields: dict, source: str) -> ModelSpec:
    try:
        return ModelSpec(**fields)
    except pydantic.ValidationError as exc:
        raise first_error(exc, prefix=f"{source}: ") from None


def _one_of(value: object, table: dict) -> bool:
    return isinstance(value, str) and value in table  # a list or object in the JSON is not hashable


def _falcon(raw: dict) -> dict:
    """Falcon's fields renamed, and its K/V heads as transformers' FalconAttention sets them: num_kv_heads for the
    new decoder architecture (Falcon-40B/180B), else 1 under multi_query (FalconConfig's default: Falcon-7B), else h.
    Falcon-7B's config also says num_kv_heads=71, which FalconAttention ignores for it."""
    cfg = dict(raw)
    for alias, name in FALCON_ALIASES.items():
        if cfg.get(name) is None and cfg.get(alias) is not None:
            cfg[name] = cfg[alias]
    heads = cfg.get("num_attention_heads")
    if cfg.get("new_decoder_architecture"):
        cfg["num_key_value_heads"] = cfg.get("num_kv_heads") or heads
    else:
        cfg["num_key_value_heads"] = 1 if cfg.get("multi_query", True) else heads
    return cfg


def _canonical(raw: dict, source: Path) -> dict:
    """The config in Llama/DeepSeek field names, after checking its model_type."""
    model_type = raw.get("model_type")
    if model_type is not None and not _one_of(model_type, HF_MODEL_TYPES):
        raise SpecError(
            f"{source}: model_type {excerpt(model_type)} is not supported (allowed: {', '.join(HF_MODEL_TYPES)})"
        )
    falcon_style = model_type == "falcon" or "multi_query" in raw or "new_decoder_architecture" in raw
    cfg = _falcon(raw) if falcon_style else raw
    cfg = {**HF_DEFAULTS.get(model_type, {}), **cfg}
    for key in HF_IGNORED.get(model_type, ()):
        cfg.pop(key, None)
    if model_type == "qwen2":
        cfg["sliding_window"] = _qwen2_window(cfg, source)
    required = HF_REQUIRED + HF_MODEL_TYPES.get(model_type, ())
    missing = [k for k in required if cfg.get(k) is None]
    if missing:
        raise SpecError(f"{source}: missing field {missing[0]} (required: {', '.join(required)})")
    return cfg


def _qwen2_window(cfg: dict, source: Path) -> int | None:
    """Qwen2's window as Qwen2Config and its attention apply it: only under use_sliding_window, and only in layers
    from max_window_layers on (or as `layer_types` lists them). A model whose layers differ is refused: every layer
    of a ModelSpec is costed alike."""
    window = cfg.get("sliding_window")
    if not cfg.get("use_sliding_window") or window is None:
        return None
    layers = cfg.get("num_hidden_layers")
    kinds = cfg.get("layer_types")
    if isinstance(kinds, list) and kinds:
        sliding = sum(k == "sliding_attention" for k in kinds)
        layers = len(kinds)
    else:
        first = cfg.get("max_window_layers")
        sliding = max(0, layers - first) if isinstance(layers, int) and isinstance(first, int) else None
    if sliding == 0:
        return None
    if sliding != layers:
        raise SpecError(f"{source}: use_sliding_window with {sliding} of {layers} layers windowed "
                        "(max_window_layers or layer_types): models whose layers differ are not supported")  # fmt: skip
    return window


def _precision(cfg: dict, source: Path) -> dict:
    dtype = cfg.get("torch_dtype") or cfg.get("dtype")  # transformers >= 4.56 writes `dtype`
    if dtype is None:
        return {}
    if not _one_of(dtype, HF_DTYPES):
        raise SpecError(f"{source}: torch_dtype {excerpt(dtype)} is not supported (allowed: {', '.join(HF_DTYPES)})")
    return {"precision": HF_DTYPES[dtype]}


def _fingerprint(spec: ModelSpec) -> str:
    """8 hex digits of the layer shape, normalised so that equal layers hash equal (kv_heads unset or h, head_dim
    unset or d/h). Name and precision are left out: the export slug carries the precision itself."""
    fields = spec.model_dump(exclude={"name", "precision"}) | {"kv_heads": spec.n_kv, "head_dim": spec.d_h}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def _hf_name(cfg: dict, spec: ModelSpec) -> str:
    """<stem>-<fingerprint>, the stem from _name_or_path's last part, else model_type. The fingerprint is always
    there: a pruned or resized checkpoint keeps its base model's _name_or_path."""
    last = str(cfg.get("_name_or_path") or "").rstrip("/\\").replace("\\", "/").rpartition("/")[2]
    stem = re.sub(r"[^A-Za-z0-9_.\-]+", "-", last).strip("-.") or cfg.get("model_type") or "custom"
    return f"{stem}-{_fingerprint(spec)}"


def from_hf_config(path: str | Path) -> ModelSpec:
    """Read a Hugging Face config.json: DeepSeek-V2/V3 or Kimi K2 (MLA), or Llama, Mistral, Qwen2 or Falcon
    (MHA/GQA/MQA; Falcon's multi_query and new_decoder_architecture decide its K/V heads). A config without
    `model_type` is accepted when it has the fields (HF_REQUIRED). torch_dtype bfloat16 and float16 read as bf16,
    float32 as fp32. A key the config leaves out takes its class's default (HF_DEFAULTS); Qwen2's sliding_window
    counts only under use_sliding_window and max_window_layers. The name is unique per distinct
    layer shape (`_hf_name`), so exports of two sizes of one family do not overwrite each other."""
    path = Path(path)
    raw = read_document(path, "--hf-config")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: --hf-config must be a JSON object of field: value")
    cfg = _canonical(raw, path)
    fields = {ours: cfg[hf] for hf, ours in HF_FIELDS.items() if cfg.get(hf) is not None}
    if "kv_lora_rank" not in fields:  # a plain MHA/GQA model: the MLA head dims of its config do not apply
        for key in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "q_lora_rank"):
            fields.pop(key, None)
    if cfg.get("model_type") is None and cfg.get("use_sliding_window") is False:  # Qwen2-style, untyped
        fields.pop("sliding_window", None)
    spec = validate({**fields, **_precision(cfg, path)}, str(path))
    return spec.model_copy(update={"name": _hf_name(cfg, spec)})


def _shipped(preset: str) -> ModelSpec:
    return from_hf_config(CONFIG_DIR / f"{preset}.json").model_copy(update={"name": preset})


PRESETS: dict[str, ModelSpec] = {
    "deepseek-v3": ModelSpec(
        name="deepseek-v3", d_model=7168, heads=128, kv_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, layers=61,
    ),
    # DeepSeek-V3.2(-Exp) config.json: V3's attention plus the DSA lightning indexer (64 heads x 128, top-2048)
    "deepseek-v3.2": ModelSpec(
        name="deepseek-v3.2", d_model=7168, heads=128, kv_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, layers=61, index_n_heads=64, index_head_dim=128,
        index_topk=2048,
    ),
    "deepseek-v2": ModelSpec(
        name="deepseek-v2", d_model=5120, heads=128, kv_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, layers=60,
    ),
    "deepseek-v2-lite": ModelSpec(
        name="deepseek-v2-lite", d_model=2048, heads=16, kv_heads=16, q_lora_rank=0, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, layers=27,
    ),
    # The public Hugging Face configs of moonshotai/Kimi-K2-Instruct, meta-llama/Llama-3.1-8B and -70B,
    # Qwen/Qwen2.5-7B and mistralai/Mistral-7B-v0.1, shipped as model_configs/<preset>.json (see its README.md).
    **{p: _shipped(p) for p in SHIPPED_PRESETS},
}  # fmt: skip


def check_scale(model: ModelSpec, batch: int, tokens: int, keys: int, where: str = "") -> None:
    """Refuse a workload whose counts would overflow 64-bit integers. Each size is within its own maximum, but
    their product need not be (V3 prefill at S = 2**24 has ~1e19 MACs): an upper bound of the MACs, attention
    B.T.h.L.2D plus projections B.T.W**2 (D the widest head, W the widest layer), is held to MAX_COUNT."""
    rope = model.qk_rope_head_dim or 0
    widest_head = max(model.d_model // model.heads, model.head_dim or 0, model.v_head_dim or 0,
                      (model.qk_nope_head_dim or 0) + rope, (model.kv_lora_rank or 0) + rope)  # fmt: skip
    widest_layer = model.d_model + model.q_lora_rank + (model.kv_lora_rank or 0) + 3 * model.heads * widest_head
    macs = batch * tokens * (model.heads * keys * 2 * widest_head + widest_layer**2)
    if macs > MAX_COUNT:
        raise SpecError(f"{where}{model.name} at B={batch}, {tokens} new tokens over {keys} keys has ~{macs:.1e} "
                        f"MACs, beyond the 64-bit counts of the store (at most {MAX_COUNT:.1e}; reduce batch, "
                        "context or the model's size)")  # fmt: skip


def resolve(model: str | None = None, hf_config: str | Path | None = None) -> ModelSpec:
    """A preset by name, or a config file; exactly one of the two."""
    if hf_config is not None:
        return from_hf_config(hf_config)
    if model not in PRESETS:
        raise SpecError(f"--model: unknown preset {excerpt(model)} (allowed: {', '.join(PRESETS)})")
    return PRESETS[model]


def resolve_name_or_path(value: str) -> ModelSpec:
    """A preset name, else the path of a Hugging Face config.json (how sweep specs name models)."""
    if value in PRESETS:
        return PRESETS[value]
    if Path(value).is_file():
        return from_hf_config(value)
    raise SpecError(f"model {excerpt(value)}: neither a preset (allowed: {', '.join(PRESETS)}) nor a config.json file")
