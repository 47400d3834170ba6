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

Every point is validated when the spec is loaded (its workload and platform are built, once per group of points
that differ only in their sizes, and the checks that depend on sizes run per point), so a bad value ends with one
SpecError line naming the field, e.g. `sweeps.0.engines.1: Input should be 'analytic', ...`.
"""

import itertools
import operator
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from stream_mla.errors import SpecError, each_once, first_error, read_document, reject_bools
from stream_mla.models import PRESETS as MODEL_PRESETS
from stream_mla.models import Precision, resolve_name_or_path
from stream_mla.platforms import PRESETS as PLATFORM_PRESETS
from stream_mla.sweeps import points as _points
from stream_mla.sweeps.fast import keys_until_failure
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

    _no_bools = model_validator(mode="before")(reject_bools)  # `batch: [true]` is not batch 1
    _each_once = field_validator("models", "schemes", "phases", "batch", "context", "platforms", "bw_scale", "engines",
                                 "kv_heads", "precision", "kv_precision", "act_precision", "queries", "parts",
                                 "window", "kv_chunks")(each_once)  # fmt: skip

    def points(self) -> list[SweepPoint]:
        """The block's product in AXES order (the first axis outermost)."""
        fields = tuple(field for _, field in AXES)
        axes, make = _assembler(fields, [getattr(self, axis) for axis, _ in AXES])
        return [make(values) for values in itertools.product(*axes)]


def _adjusted(p: dict) -> dict:
    """A product's point as the sweep runs it: K/V heads for gqa only, one query and no split-KV for prefill."""
    if p["scheme"] != "gqa":
        p["kv_heads"] = None
    if p["phase"] != "decode":
        p["queries"] = 1  # prefill's queries are its S tokens
        p["kv_chunks"] = None  # split-KV splits a decode cache
    return p


def _assembler(fields: tuple[str, ...], axes: list[list]) -> tuple[list[list], Callable]:
    """(axes, make): make(values) is the point of one product tuple of the axes. `SweepPoint(**p)`, or, when
    SweepPoint validates each field on its own (no model or field validators, no post-init, no private or extra
    attributes), what `SweepPoint.model_construct` makes of values each validated once through SweepPoint itself:
    per distinct value of each axis instead of per point. Checked against `SweepPoint(**p)` on the first point;
    any difference, and it is SweepPoint(**p) for all."""

    def validated(values: tuple) -> SweepPoint:
        return SweepPoint(**_adjusted(dict(zip(fields, values, strict=True))))

    d, order = SweepPoint.__pydantic_decorators__, tuple(SweepPoint.model_fields)
    plain = not (d.validators or d.field_validators or d.root_validators or d.model_validators) and not (
        SweepPoint.__pydantic_post_init__ or SweepPoint.__private_attributes__ or SweepPoint.__pydantic_root_model__
    )
    if not plain or sorted(fields) != sorted(order):
        return axes, validated
    first = dict(zip(fields, (a[0] for a in axes), strict=True))
    axes = [[getattr(SweepPoint(**{**first, f: v}), f) for v in a] for f, a in zip(fields, axes, strict=True)]
    adjusted = SweepPoint(**{**first, "kv_heads": None, "queries": 1, "kv_chunks": None})
    no_heads, one, no_chunks = adjusted.kv_heads, adjusted.queries, adjusted.kv_chunks
    perm = operator.itemgetter(*(fields.index(f) for f in order))
    new, put = object.__new__, object.__setattr__
    given = set(order)  # every field is given: one set shared by the block's points (pydantic copies it to change it)

    def make(values: tuple) -> SweepPoint:
        p = dict(zip(order, perm(values), strict=True))
        if p["scheme"] != "gqa":
            p["kv_heads"] = no_heads
        if p["phase"] != "decode":
            p["queries"], p["kv_chunks"] = one, no_chunks
        m = new(SweepPoint)
        put(m, "__dict__", p)
        put(m, "__pydantic_fields_set__", given)
        put(m, "__pydantic_extra__", None)
        put(m, "__pydantic_private__", None)
        return m

    probe = tuple(a[0] for a in axes)
    got, ref = make(probe), validated(probe)
    attrs = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
    same = got == ref and all(getattr(got, a) == getattr(ref, a) for a in attrs) and list(got.__dict__) == list(order)
    return axes, make if same else validated


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
        return list(self.keyed_points(validate, source).values())

    def keyed_points(self, validate: bool = False, source: str = "sweep spec") -> dict[str, SweepPoint]:
        """{key: point} of `points()` (the union of the blocks' products, de-duplicated by key, in first-seen order).

        Keys come per group of points that differ only in their sizes (`fast.keys_until_failure`): each group is
        resolved (with validate, its platform checked too) once, and only the checks that depend on sizes run per
        point; a point failing one raises its own error, the first in order as before. A spec of presets only is
        keyed once per content (`_MEMO`: its blocks, the presets, the code digest and the engine versions)."""
        token = self._token()
        hit = _MEMO.get(token) if token is not None else None
        if hit is not None and (hit[1] or not validate):
            _MEMO.move_to_end(token)
            return dict(hit[0])
        seen: dict[str, SweepPoint] = {}
        for i, block in enumerate(self.sweeps):
            pts = block.points()
            keys, failure = keys_until_failure(pts, validate=validate)
            for key, pt in zip(keys, pts, strict=False):
                seen.setdefault(key, pt)
            if failure is not None:
                pt, exc = pts[failure[0]], failure[1]
                if not isinstance(exc, SpecError):
                    raise exc
                where = f"{pt.model} {pt.scheme} {pt.phase} B={pt.batch} L={pt.context} on {pt.platform}"
                raise SpecError(f"{source}: sweeps.{i} ({where}): {_as_fields(str(exc))}") from None
        if token is not None:
            _MEMO[token] = (seen, validate or (hit is not None and hit[1]))
            while len(_MEMO) > MEMO_SPECS:
                _MEMO.popitem(last=False)
        return dict(seen)

    def _token(self) -> tuple | None:
        """Everything the keys of a spec of presets depend on; None when a model or platform is a file (its
        content may change between two calls) or an engine has no version."""
        try:
            blocks = tuple(tuple(tuple(getattr(b, axis)) for axis, _ in AXES) for b in self.sweeps)
            models = sorted({m for b in self.sweeps for m in b.models})
            platforms = sorted({p for b in self.sweeps for p in b.platforms})
            engines = sorted({e for b in self.sweeps for e in b.engines})
            if not (set(models) <= MODEL_PRESETS.keys() and set(platforms) <= PLATFORM_PRESETS.keys()):
                return None
            return (
                blocks,
                tuple(MODEL_PRESETS[m].model_dump_json() for m in models),
                tuple(PLATFORM_PRESETS[p].model_dump_json() for p in platforms),
                tuple((e, _points.engine_version(e), _points.code_digest(e != "analytic")) for e in engines),
            )
        except Exception:  # e.g. an engine without a version: no memo, the points say what is wrong
            return None


def _as_fields(message: str) -> str:
    """A point's error as the spec says it: the CLI flags the workload checks name (`--kv-heads`) as the block's
    fields (`kv_heads`, `parts`)."""
    fields = {"--" + field.replace("_", "-"): axis for axis, field in AXES}
    return re.sub(r"(?<![\w-])--[a-z][a-z0-9-]*", lambda m: fields.get(m.group(0), m.group(0)), message)


MEMO_SPECS = 4  # specs whose keyed points are kept
_MEMO: OrderedDict[tuple, tuple[dict[str, SweepPoint], bool]] = OrderedDict()


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
