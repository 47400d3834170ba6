"""A hardware platform as one validated record, loadable from a short user YAML.

Units: clock in GHz, sizes in bytes, bandwidths in bits/cycle (DRAM in GB/s, 1 GB = 1e9 B), energies in pJ.
The engines know no clock (engines.md trap 6): every engine-facing number is derived here, once.
"""

import re
from pathlib import Path
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from stream_mla.errors import EXCERPT_CHARS, SpecError, excerpt, first_error, read_document, reject_bools
from stream_mla.models import BYTES_PER_ELEMENT, Precision

# Stream's operand_precision only knows ELEMENT_BITS names (no fp8): fp8 is priced as an 8-bit type.
STREAM_ELEMENT: dict[str, str] = {"bf16": "bf16", "fp32": "fp32", "int8": "int8", "fp8": "int8"}
ACCUMULATOR: dict[str, str] = {"bf16": "fp32", "fp32": "fp32", "int8": "int32", "fp8": "fp32"}
MAX_CORES = 16  # Stream's MILP wall time explodes past 16 compute cores (engines.md §7)
SOFTMAX_ROW_BYTES = 32768 * 4  # one softmax row of 32k fp32 scores

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*$")


def _parse_bytes(value: Any) -> Any:
    """Accept an integer or a string like '2 MiB' / '32 MB' (MB = 1e6 B, MiB = 2**20 B)."""
    if not isinstance(value, str):
        return value
    m = _SIZE_RE.match(value.lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"expected bytes as an integer or a size like '2 MiB' or '32 MB', got {excerpt(value)}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


# Upper bounds far above any real chip: they catch typos (a missing unit, an extra exponent) and keep every
# derived number finite and every engine integer within 64 bits. Non-finite values (.inf, .nan) are refused by
# the models' allow_inf_nan=False.
MAX_BYTES = 2**50  # 1 PiB
MAX_ENERGY_PJ = 1e6  # per MAC, bit or op
MAX_WIDTH = 2**24  # PE rows/columns, lanes, words, bits per cycle
Bytes = Annotated[int, BeforeValidator(_parse_bytes), Field(gt=0, le=MAX_BYTES)]
NonNegFloat = Annotated[float, Field(ge=0, le=MAX_ENERGY_PJ)]
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]


def bits_per_cycle(gb_per_s: float, clock_ghz: float) -> int:
    """GB/s -> whole bits/cycle (engines need integers), rounded to nearest. Below 1 bit/cycle is refused, not
    clamped: a clamp would silently give the engines more bandwidth than the platform has."""
    bits = round(gb_per_s * 8 / clock_ghz)
    if bits < 1:
        raise SpecError(f"dram_gb_s: {gb_per_s:g} GB/s at {clock_ghz:g} GHz is {gb_per_s * 8 / clock_ghz:.3g} "
                        "bits/cycle; the engines need at least 1 (raise dram_gb_s or lower clock_ghz)")  # fmt: skip
    return bits


class PlatformSpec(BaseModel):
    """One accelerator: `cores` identical matrix cores, one vector core and off-chip DRAM."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", max_length=100, description="platform name, also the "
                      "generated file stem")  # fmt: skip
    clock_ghz: float = Field(gt=0, le=100, description="core clock f in GHz; converts GB/s to bits/cycle and cycles "
                             "to s")  # fmt: skip
    cores: int = Field(ge=1, le=MAX_CORES, description=f"matrix cores (Stream compute cores), 1..{MAX_CORES}")
    rows: Width = Field(description="PE array rows per core (spatial dim D1, output channels K)")
    cols: Width = Field(description="PE array columns per core (spatial dim D2, reduction C)")
    precision: Precision = Field("bf16", description="native operand type: bf16, fp32, int8 or fp8")
    mac_rate: dict[Precision, Annotated[float, Field(gt=0, le=64)]] = Field(
        default_factory=dict,
        description="other supported operand types and their MAC rate relative to the native one, e.g. "
        "{fp8: 2, int8: 2} on Hopper (2x the bf16 peak); the native type is always supported at 1",
    )
    mac_pj: NonNegFloat = Field(description="energy per MAC in pJ")
    sram_bytes: Bytes = Field(description="SRAM per matrix core in bytes (int, or '16 MiB' / '32 MB')")
    sram_bits_per_cycle: Width = Field(description="SRAM port width per core in bits/cycle")
    sram_pj_per_bit: NonNegFloat = Field(description="SRAM access energy in pJ/bit")
    rf_weight_words: Width = Field(1, description="weight register words per PE (deeper -> fewer SRAM stalls)")
    rf_output_words: Width = Field(1, description="partial-sum register words per PE (accumulator width)")
    rf_pj_per_bit: NonNegFloat = Field(description="register-file access energy in pJ/bit")
    vector_lanes: Width = Field(256, description="vector-unit lanes (fp32 ops/cycle)")
    vector_sram_bytes: Bytes = Field(
        32 * SOFTMAX_ROW_BYTES,
        description="vector-unit SRAM in bytes; default 4 MiB holds 32 softmax rows of 32k fp32 scores "
        "(512 KiB made MLA decode at L=32768 infeasible, engines.md §3)",
    )
    vector_pj_per_op: NonNegFloat = Field(0.5, description="energy per vector-lane op in pJ")
    dram_gb_s: float = Field(gt=0, le=1e7, description="DRAM bandwidth in GB/s (1e9 B/s)")
    dram_pj_per_bit: NonNegFloat = Field(description="DRAM access energy in pJ/bit")
    link_bits_per_cycle: Width = Field(4096, description="width of the link between every two on-chip cores (a "
                                       "crossbar) in bits/cycle")  # fmt: skip
    link_pj_per_bit: NonNegFloat = Field(0.1, description="on-chip link energy in pJ/bit")
    static_power_w: float = Field(0.0, ge=0, le=1e6, description="static power in W; engines report dynamic "
                                  "energy only")  # fmt: skip

    _no_bools = model_validator(mode="before")(reject_bools)  # YAML's `yes`/`true` are not 1

    @model_validator(mode="after")
    def _dram_port(self) -> "PlatformSpec":
        bits_per_cycle(self.dram_gb_s, self.clock_ghz)  # refuses a port below 1 bit/cycle
        return self

    @model_validator(mode="after")
    def _physical(self) -> "PlatformSpec":
        """What no chip can be: an SRAM that cannot hold one tile of weights of its own array (rows x cols operands
        at the native precision), or a DRAM that delivers more bits per cycle than the cores' SRAM ports can take."""
        tile = self.rows * self.cols * BYTES_PER_ELEMENT[self.precision]
        if self.sram_bytes < tile:
            raise ValueError(f"sram_bytes: {self.sram_bytes:,} B is smaller than one tile of the array (rows x cols = "
                             f"{self.rows} x {self.cols} {self.precision} = {tile:,} B); raise sram_bytes to at "
                             f"least {tile:,} or shrink rows/cols")  # fmt: skip
        ports = self.cores * self.sram_bits_per_cycle
        dram, most = self.dram_gb_s * 8 / self.clock_ghz, ports * self.clock_ghz / 8
        if dram > ports:
            raise ValueError(f"dram_gb_s: {self.dram_gb_s:g} GB/s is {dram:,.0f} bits/cycle at {self.clock_ghz:g} "
                             f"GHz, more than the SRAM ports take (cores x sram_bits_per_cycle = {ports:,}); lower "
                             f"dram_gb_s to at most {most:g} or widen sram_bits_per_cycle")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _rates(self) -> "PlatformSpec":
        for prec, rate in self.mac_rate.items():
            if prec == self.precision and rate != 1:
                raise ValueError(f"mac_rate.{prec}: the native precision runs at rate 1 (got {rate:g})")
            if not float(self.cols * rate).is_integer():  # the engines see the rate as a wider array
                raise ValueError(f"mac_rate.{prec}: cols x rate must be a whole number of PE columns "
                                 f"({self.cols} x {rate:g})")  # fmt: skip
        return self

    # --- precision ---
    @property
    def precisions(self) -> dict[str, float]:
        """Every supported operand type and its MAC rate relative to the native one."""
        return {self.precision: 1.0, **self.mac_rate}

    def at_precision(self, precision: str) -> "PlatformSpec":
        """The platform as the engines see it for MACs at `precision`: the same chip with its native type set to it
        and its array widened by the rate (columns x rate), so peak MAC/s is that precision's peak. Energy per
        MAC is kept (an assumption: the presets publish no per-precision MAC energy)."""
        if precision == self.precision:
            return self
        if precision not in self.mac_rate:
            supported = ", ".join(self.precisions)
            raise SpecError(f"precision: the workload computes in {precision}, platform {self.name} in {supported} "
                            f"(set --precision, or the platform's mac_rate.{precision})")  # fmt: skip
        rate = self.mac_rate[precision]
        others = {p: r / rate for p, r in self.precisions.items() if p != precision}
        return self.model_copy(update={"precision": precision, "cols": round(self.cols * rate), "mac_rate": others})

    # --- derived numbers (the engines see only these) ---
    @property
    def bytes_per_element(self) -> int:
        return BYTES_PER_ELEMENT[self.precision]

    @property
    def element_bits(self) -> int:
        return 8 * self.bytes_per_element

    @property
    def accumulator(self) -> str:
        return ACCUMULATOR[self.precision]

    @property
    def peak_macs_per_cycle(self) -> int:
        return self.cores * self.rows * self.cols

    @property
    def peak_mac_per_s(self) -> float:
        return self.peak_macs_per_cycle * self.clock_ghz * 1e9

    @property
    def peak_flop_per_s(self) -> float:
        return 2 * self.peak_mac_per_s

    @property
    def dram_bytes_per_s(self) -> float:
        return self.dram_gb_s * 1e9

    @property
    def dram_bits_per_cycle(self) -> int:
        """GB/s × 8 / f_GHz rounded to the nearest integer (engine ports take whole bits); ≤ 0.02 % off for presets."""
        return bits_per_cycle(self.dram_gb_s, self.clock_ghz)

    @property
    def ridge_flop_per_byte(self) -> float:
        """Roofline ridge from the exact GB/s (not the rounded bits/cycle)."""
        return self.peak_flop_per_s / self.dram_bytes_per_s

    @property
    def total_sram_bytes(self) -> int:
        return self.cores * self.sram_bytes

    def seconds(self, cycles: float) -> float:
        return cycles / (self.clock_ghz * 1e9)

    def static_energy_pj(self, cycles: float) -> float:
        """P_static × t, in pJ (engines.md trap 7)."""
        return self.static_power_w * self.seconds(cycles) * 1e12

    # --- loading ---
    @classmethod
    def validate_fields(cls, fields: dict[str, Any], source: str) -> "PlatformSpec":
        """Build from a dict; any error becomes one SpecError line naming the field."""
        try:
            return cls(**fields)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            if err["type"] == "extra_forbidden":  # list the allowed names, not just "extra inputs not permitted"
                allowed = ", ".join(cls.model_fields)
                raise SpecError(
                    f"{source}: {str(err['loc'][0])[:EXCERPT_CHARS]}: unknown field (allowed: {allowed})"
                ) from None
            raise first_error(exc, prefix=f"{source}: ") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PlatformSpec":
        path = Path(path)
        raw = read_document(path, "platform YAML")
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: a platform YAML must be a mapping of field: value")
        return cls.validate_fields({"name": path.stem, **raw}, str(path))
