"""A sweep spec (YAML): blocks of lists whose cartesian products are the sweep's points.

    sweeps:
      - name: F2                      # optional label
        models: [deepseek-v3]         # model presets or HF config.json paths (relative to the spec file)
        schemes: [mha, mla-absorb]
        phases: [decode]              # default [decode]
        batch: [1, 32]                # default [1]
        context: [4096]
        platforms: [h100-like, my.yaml]   # presets or platform YAML paths (relative to the spec file)
        bw_scale: [1.0]               # DRAM-bandwidth scale factors, default [1.0]
        engines: [analytic]           # analytic, zigzag, stream (or stream:fixed-mapping, ...); default [analytic]
        kv_heads: [null]              # gqa only (ignored by other schemes); default [null]
        precision: [null, fp8]        # weights (and default of the next two); null = each platform's native
        kv_precision: [null]          # KV cache; null = precision
        act_precision: [null]         # activations; null = precision
        queries: [1, 2]               # decode: new tokens per sequence and step; default [1]
        parts: [layer, core]          # the whole layer or the attention core alone; default [layer]
        window: [null, 4096]          # sliding window; null = the model's own (none for DeepSeek); default [null]
        kv_chunks: [null, 8]          # split-KV decode chunks C (decode only; null = 1, the plain graph)

Every point is validated when the spec is loaded (its workload and platform are built), so a bad value ends
with one SpecError line naming the field, e.g. `sweeps.0.engines.1: Input should be 'analytic', ...`.
"""

import itertools
from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationInfo

from stream_mla.errors import SpecError, first_error, read_document
from stream_mla.models import PRESETS as MODEL_PRESETS
from stream_mla.models import Precision, resolve_name_or_path
from stream_mla.platforms import PRESETS as PLATFORM_PRESETS
from stream_mla.sweeps.points import Engine, SweepPoint
from stream_mla.workloads import Part, registry

DEFAULT_SPEC = Path(__file__).with_name("default.yaml")


def _model(m: str, info: ValidationInfo) -> str:
    """A preset, or an HF config.json path (relative to the spec file, as platform paths are)."""
    base = (info.context or {}).get("base")
    m = _relative_to(m, base, MODEL_PRESETS) if base is not None else m
    resolve_name_or_path(m)  # one line naming the presets when it is neither
    return m


ModelName = Annotated[str, AfterValidator(_model)]
SchemeName = Annotated[str, AfterValidator(registry.canonical)]


class Block(BaseModel):
    """One cartesian product."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    models: list[ModelName] = Field(min_length=1)
    schemes: list[SchemeName] = Field(min_length=1)
    phases: list[Literal["decode", "prefill"]] = Field(default=["decode"], min_length=1)
    batch: list[PositiveInt] = Field(default=[1], min_length=1)
    context: list[PositiveInt] = Field(min_length=1)
    platforms: list[str] = Field(min_length=1)
    bw_scale: list[PositiveFloat] = Field(default=[1.0], min_length=1)
    engines: list[Engine] = Field(default=["analytic"], min_length=1)
    kv_heads: list[PositiveInt | None] = Field(default=[None], min_length=1)
    precision: list[Precision | None] = Field(default=[None], min_length=1)  # None: each platform's native one
    kv_precision: list[Precision | None] = Field(default=[None], min_length=1)
    act_precision: list[Precision | None] = Field(default=[None], min_length=1)
    queries: list[PositiveInt] = Field(default=[1], min_length=1)  # decode only; prefill points take 1
    parts: list[Part] = Field(default=["layer"], min_length=1)
    window: list[PositiveInt | None] = Field(default=[None], min_length=1)  # None: the model's own
    kv_chunks: list[PositiveInt | None] = Field(default=[None], min_length=1)  # decode only; None: the plain graph

    def points(self) -> list[SweepPoint]:
        """The block's product in AXES order (the first axis outermost)."""
        out = []
        for values in itertools.product(*(getattr(self, axis) for axis, _ in AXES)):
            p = dict(zip((field for _, field in AXES), values, strict=True))
            p["kv_heads"] = p["kv_heads"] if p["scheme"] == "gqa" else None
            p["queries"] = p["queries"] if p["phase"] == "decode" else 1  # prefill's queries are its S tokens
            p["kv_chunks"] = p["kv_chunks"] if p["phase"] == "decode" else None  # split-KV splits a decode cache
            out.append(SweepPoint(**p))
        return out


# block list -> SweepPoint field; new axes go last so existing specs keep their point order
AXES = (
    ("engines", "engine"), ("models", "model"), ("schemes", "scheme"), ("phases", "phase"), ("batch", "batch"),
    ("context", "context"), ("platforms", "platform"), ("bw_scale", "bw_scale"), ("kv_heads", "kv_heads"),
    ("precision", "precision"), ("kv_precision", "kv_precision"), ("act_precision", "act_precision"),
    ("queries", "queries"), ("parts", "part"), ("window", "window"), ("kv_chunks", "kv_chunks"),
)  # fmt: skip


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sweeps: list[Block] = Field(min_length=1)

    @classmethod
    def from_dict(cls, doc: object, source: str = "sweep spec", base: Path | None = None) -> "SweepSpec":
        """Validate a parsed YAML document; any error (including a bad point) is one SpecError line."""
        if not isinstance(doc, dict):
            raise SpecError(f"{source}: a sweep spec must be a mapping with a 'sweeps' list of blocks")
        try:
            spec = cls.model_validate(doc, context={"base": base})
        except pydantic.ValidationError as exc:
            raise first_error(exc, prefix=f"{source}: ") from None
        if base is not None:  # platform YAML paths are relative to the spec file
            for b in spec.sweeps:
                b.platforms = [_relative_to(p, base, PLATFORM_PRESETS) for p in b.platforms]
        spec.points(validate=True, source=source)
        return spec

    def points(self, validate: bool = False, source: str = "sweep spec") -> list[SweepPoint]:
        """The union of every block's product, de-duplicated by content key, in first-seen order."""
        seen: dict[str, SweepPoint] = {}
        for i, block in enumerate(self.sweeps):
            for pt in block.points():
                try:
                    if validate:
                        pt.compute_platform()  # the workload, and its precision on the platform
                    key = pt.key()
                except SpecError as exc:
                    where = f"{pt.model} {pt.scheme} {pt.phase} B={pt.batch} L={pt.context} on {pt.platform}"
                    raise SpecError(f"{source}: sweeps.{i} ({where}): {exc}") from None
                seen.setdefault(key, pt)
        return list(seen.values())


def _relative_to(p: str, base: Path, presets: dict) -> str:
    if p in presets or Path(p).is_absolute():
        return p
    candidate = base / p
    return str(candidate) if candidate.exists() else p


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    return SweepSpec.from_dict(read_document(path, "sweep spec"), source=str(path), base=path.parent)


def default_sweep() -> SweepSpec:
    """The embedded reproduction grid (stream_mla/sweeps/default.yaml)."""
    return load_sweep(DEFAULT_SPEC)
