"""Hardware platforms: a validated PlatformSpec, the §10 presets, and generated Stream/ZigZag YAML."""

from pathlib import Path

from stream_mla.errors import SpecError
from stream_mla.platforms.presets import PRESETS
from stream_mla.platforms.spec import PlatformSpec
from stream_mla.platforms.stream_yaml import stream_hardware, write_stream_yaml
from stream_mla.platforms.zigzag_yaml import write_zigzag_yaml, zigzag_accelerator, zigzag_mapping

__all__ = [
    "PRESETS",
    "PlatformSpec",
    "load_platform",
    "paths",
    "stream_hardware",
    "write_all",
    "write_platform",
    "zigzag_accelerator",
    "zigzag_mapping",
]


def load_platform(name_or_path: str | Path) -> PlatformSpec:
    """A preset by name, or a platform YAML file."""
    if str(name_or_path) in PRESETS:
        return PRESETS[str(name_or_path)]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return PlatformSpec.from_yaml(path)
    raise SpecError(f"platform: unknown preset {name_or_path!r} (presets: {', '.join(PRESETS)}; or a YAML path)")


def paths(root: Path, name: str) -> dict[str, Path]:
    """Where write_platform puts a platform's files under root."""
    return {
        "stream": root / "accelerators" / "stream" / f"{name}.yaml",
        "zigzag": root / "accelerators" / "zigzag" / f"{name}.yaml",
        "zigzag_mapping": root / "mappings" / "zigzag" / f"{name}.yaml",
    }


def write_platform(p: PlatformSpec, root: Path) -> list[Path]:
    """Stream hardware, ZigZag accelerator and ZigZag mapping YAML for one platform."""
    out = paths(Path(root), p.name)
    return [write_stream_yaml(p, out["stream"]), *write_zigzag_yaml(p, out["zigzag"], out["zigzag_mapping"])]


def write_all(root: Path) -> list[Path]:
    """Every preset's files under root; byte-identical across runs."""
    return [f for p in PRESETS.values() for f in write_platform(p, Path(root))]
