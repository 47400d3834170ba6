"""The facts a runner needs about an accelerator, from a PlatformSpec or from a raw Stream hardware YAML.

Neither engine knows the clock (engines.md trap 6), and a raw YAML carries no static power: both come from
the platform spec, or from the caller for a raw YAML.
"""

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from stream_mla.errors import SpecError, read_document
from stream_mla.platforms import PlatformSpec, stream_hardware


def core_file(hardware_yaml: Path, ref: str) -> Path:
    """A core file named by a hardware YAML: relative to it, or in its cores/ folder (as Stream resolves it)."""
    direct = hardware_yaml.parent / ref
    return direct if direct.exists() else hardware_yaml.parent / "cores" / Path(ref).name


def _describe(index: int, connection: dict) -> str:
    cores = connection.get("cores", [])
    return f"core_connectivity[{index}] ({connection.get('type', 'link')} {'-'.join(map(str, cores))})"


def dropped_connections(stream: dict) -> dict[int, list[int]]:
    """{index of each `core_connectivity` entry Stream drops: the indices of the entries that replace it}. Stream's core
    graph keeps one connection per core pair, the last entry that joins the pair (a DiGraph built from every pair of
    every entry, stream/parser/accelerator_factory.py `create_core_graph`), so an entry that is last on none of its
    pairs carries no traffic: a link listed before a bus over the same cores is silently replaced by the bus."""
    pairs = [[frozenset(pair) for pair in itertools.combinations(c.get("cores", []), 2)]
             for c in stream.get("core_connectivity") or []]  # fmt: skip
    last = {pair: index for index, entry in enumerate(pairs) for pair in entry}
    dropped = {}
    for index, entry in enumerate(pairs):
        winners = sorted({last[pair] for pair in entry})
        if entry and index not in winners:
            dropped[index] = winners
    return dropped


def shadowed_connections(stream: dict) -> list[str]:
    """One line per connection Stream drops (`dropped_connections`)."""
    connections = stream.get("core_connectivity") or []
    return [f"{_describe(index, connections[index])} carries nothing: Stream keeps the last connection listed per core "
            f"pair, here {', '.join(_describe(w, connections[w]) for w in winners)}; list a bus before the links it "
            "should not replace" for index, winners in dropped_connections(stream).items()]  # fmt: skip


def offchip_memory(stream: dict) -> dict:
    """The off-chip core's memory (its first, the one Stream's DRAM is) of a Stream description with inline cores."""
    return next(iter(stream["cores"][int(stream["offchip_core_id"])]["memories"].values()))


@dataclass(frozen=True)
class Hardware:
    name: str
    stream: dict  # the Stream hardware description (one file, inline cores)
    clock_ghz: float
    peak_macs_per_cycle: int
    dram_bits_per_cycle: int
    dram_pj_per_bit: float
    static_power_w: float = 0.0
    platform: PlatformSpec | None = None  # None for a raw Stream YAML (no ZigZag description)
    source_yaml: Path | None = None  # a raw YAML is handed to Stream as is (its core files are relative to it)

    @property
    def peak_mac_per_s(self) -> float:
        return self.peak_macs_per_cycle * self.clock_ghz * 1e9

    @property
    def dram_bytes_per_s(self) -> float:
        return self.dram_bits_per_cycle / 8 * self.clock_ghz * 1e9

    @property
    def dram_bits_all_ports(self) -> int:
        """Bits per cycle the off-chip memory moves over all its ports at once: the most any step can move (Stream's
        fusemax.yaml gives its DRAM three ports of 3,200 bits; the presets one). `dram_bits_per_cycle` is one port."""
        return sum(port["bandwidth_max"] for port in offchip_memory(self.stream)["ports"])

    @property
    def connection_warnings(self) -> list[str]:
        """The connections of the Stream description that Stream drops (`shadowed_connections`)."""
        return shadowed_connections(self.stream)

    def static_energy_pj(self, cycles: float) -> float:
        return self.static_power_w * cycles / (self.clock_ghz * 1e9) * 1e12

    def stream_yaml(self, workdir: Path) -> Path:
        """The file Stream reads: the user's own, or ours written into the run folder."""
        if self.source_yaml is not None:
            return self.source_yaml
        path = workdir / f"{self.name}.stream.yaml"
        path.write_text(yaml.safe_dump(self.stream, sort_keys=False))
        return path

    @classmethod
    def from_platform(cls, p: PlatformSpec) -> "Hardware":
        return cls(name=p.name, stream=stream_hardware(p), clock_ghz=p.clock_ghz,
                   peak_macs_per_cycle=p.peak_macs_per_cycle, dram_bits_per_cycle=p.dram_bits_per_cycle,
                   dram_pj_per_bit=p.dram_pj_per_bit, static_power_w=p.static_power_w, platform=p)  # fmt: skip

    @classmethod
    def from_stream_yaml(cls, path: str | Path, clock_ghz: float = 1.0, static_power_w: float = 0.0) -> "Hardware":
        """A user's Stream hardware YAML: peak from the MatMul-capable cores, DRAM from the off-chip core."""
        path = Path(path)
        try:  # the strict reader: duplicate keys, aliases and oversized files are one line, as for every user file
            hw = read_document(path, "Stream hardware YAML")
            cores = {int(k): v if isinstance(v, dict) else read_document(core_file(path, v), "Stream core YAML")
                     for k, v in hw["cores"].items()}  # fmt: skip
            offchip = cores[int(hw["offchip_core_id"])]
        except SpecError:  # the file itself is unreadable: its own one line
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise SpecError(
                f"--hardware: {path} is not a Stream hardware YAML ({exc.__class__.__name__}: {exc})"
            ) from None
        hw["cores"] = cores
        peak = sum(math.prod(c["operational_array"]["sizes"]) for c in cores.values()
                   if c is not offchip and "MatMul" in c.get("operator_types", ["MatMul"]))  # fmt: skip
        dram = offchip_memory(hw)
        port_bits = max(port["bandwidth_max"] for port in dram["ports"])
        return cls(name=str(hw.get("name", path.stem)), stream=hw, clock_ghz=clock_ghz, peak_macs_per_cycle=peak,
                   dram_bits_per_cycle=port_bits, dram_pj_per_bit=dram["r_cost"] / port_bits,
                   static_power_w=static_power_w, source_yaml=path.resolve())  # fmt: skip
