"""A persistent cache of ZigZag's per-layer cost results, shared by processes, sweep workers and both engines.

A ZigZag search (LOMA) is a pure function of the layer it is given (equation, loop sizes, operand precisions,
constant operands, the mapping constraints), of the core (its memories, their ports and costs, the MAC array, its
dataflows), of the search settings and of the engine code. Its answer, one CostModelEvaluation (CME), is stored on
disk under a digest of all of them, so a later point, process or sweep worker reuses it instead of searching again:
ZigZag costing is 60-75 % of a Stream run's wall time (engines.md §16.4), and sweeps repeat the same shapes on the
same cores (projections depend on B·S only, two presets may share a die).

Two users:
* our ZigZag runner (`zigzag_runner.MemoStage`), entries under `<root>/zigzag/runner/`;
* Stream's ZigZag cost estimation, through Stream's own extension point: a `stream.core_cost_backends` backend
  (`STREAM_BACKEND`, priority 1 over the built-in ZigZag backend's 0) whose estimator is Stream's
  `ZigZagCostEstimator` with its `run_zigzag` search answered from `<root>/zigzag/stream/`. Stream finds backends
  by entry point; `register_stream_backend()` declares ours to importlib.metadata unless the installed
  distribution already does (pyproject.toml `[project.entry-points."stream.core_cost_backends"]`).

The same store keeps the group memo's entries (`group_memo.py`: a fused group Stream solved, under
`<root>/stream/groups/`), keyed by that module.

What is a key: `layer_description` (the ZigZag LayerNode's cost-relevant attributes, canonicalised: sets sorted,
no object ids), `core_description` (every memory level with its instance and ports, the array, the dataflows;
without the core's id and name and the per-core port/sharing ids ZigZag numbers globally), the search settings, and
`ENGINE_VERSIONS` (zigzag-dse, stream-dse, Python, FORMAT). Anything that cannot be canonicalised skips the cache
(the search runs), it never shares an entry.

Where: `$STREAM_MLA_CACHE` (`off` disables), else `$XDG_CACHE_HOME/stream-mla`, else `~/.cache/stream-mla`. One
pickle per entry, `<root>/zigzag/<kind>/<2 hex>/<64 hex>.pickle`, written to a temporary file in the same folder
and then `os.replace`d: a reader sees a whole entry or none, and workers that compute the same entry at once each
write identical bytes. Each entry ends with the sha256 of its pickle (`CHECKSUM_MAGIC` + 32 bytes), checked on every
read: a flipped bit that still unpickles would otherwise be a wrong latency or count, reported as right. An
unreadable entry, or one whose checksum does not match, is a miss (and is rewritten). Entries are pickles: keep the
folder private (it is the user's own cache folder by default). Delete it at will; nothing else lives there.
"""

from __future__ import annotations

import hashlib
import logging
import numbers
import os
import pickle
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_ENV = "STREAM_MLA_CACHE"
DISABLED = ("off", "0", "no", "false", "none")
FORMAT = 2  # bump when a key's parts or a stored value change meaning (2: entries end with their checksum)
CHECKSUM_MAGIC = b"\nstream-mla sha256 "  # then the 32-byte sha256 of the pickle before it

# Attributes left out of every description: ids ZigZag numbers process-globally (the same core parsed twice, or
# core 3 vs core 0, gets other port ids and sharing groups) and networkx's lazily filled cache. ZigZag's cost model
# reads none of them (MemoryInstance.has_same_performance leaves the sharing group out too).
SKIPPED_ATTRIBUTES = frozenset({"port_id", "shared_memory_group_id", "__networkx_cache__"})
# What of a ZigZag LayerNode the mapping search reads (not its name, id or producers' ids).
LAYER_FIELDS = (
    "type", "equation", "layer_dim_sizes", "operand_precision", "constant_operands", "dimension_relations",
    "pr_layer_dim_sizes", "padding", "spatial_mapping", "spatial_mapping_hint", "memory_operand_links",
    "temporal_ordering",
)  # fmt: skip
MAX_DEPTH = 40

STATS: Counter[str] = Counter()  # "<kind>.hits" / ".misses" / ".writes" / ".errors" in this process


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


ENGINE_VERSIONS = (
    f"zigzag-dse {_version('zigzag-dse')}",
    f"stream-dse {_version('stream-dse')}",
    f"python {sys.version_info.major}.{sys.version_info.minor}",
    f"format {FORMAT}",
)


def cache_root() -> Path | None:
    """The cache folder, or None when `STREAM_MLA_CACHE` is `off`."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if raw.lower() in DISABLED:
        return None
    if raw:
        return Path(raw).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stream-mla"


# --- keys ---------------------------------------------------------------------------------------------------
class Uncacheable(TypeError):
    """A value with no canonical form: the caller searches instead of sharing an entry."""


def canonical(obj: Any, _depth: int = 0) -> Any:
    """A nested tuple of plain values that is equal for equal objects in any process: sets and dicts sorted, objects
    by class name and attributes (minus SKIPPED_ATTRIBUTES), never an id or a default repr."""
    if _depth > MAX_DEPTH:
        raise Uncacheable("nested too deep (a cycle?)")
    if obj is None or isinstance(obj, bool | str | bytes):
        return obj
    if isinstance(obj, Enum):  # before int/str: some enums subclass them
        return (type(obj).__qualname__, obj.name)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    down = _depth + 1
    if isinstance(obj, dict):
        items = ((canonical(k, down), canonical(v, down)) for k, v in obj.items())
        return ("dict", tuple(sorted(items, key=repr)))
    if isinstance(obj, set | frozenset):
        return ("set", tuple(sorted((canonical(x, down) for x in obj), key=repr)))
    if isinstance(obj, list | tuple):
        return tuple(canonical(x, down) for x in obj)
    state = getattr(obj, "__dict__", None)
    if state is None:
        slots = [s for cls in type(obj).__mro__ for s in getattr(cls, "__slots__", ())]
        if not slots:
            raise Uncacheable(f"no canonical form for {type(obj).__qualname__}")
        state = {s: getattr(obj, s) for s in slots if hasattr(obj, s)}
    fields = {k: v for k, v in state.items() if k not in SKIPPED_ATTRIBUTES}
    return (type(obj).__qualname__, canonical(fields, down))


def layer_description(layer: Any) -> tuple:
    """The cost-relevant attributes of a ZigZag LayerNode, before the spatial mapping stage fills them in."""
    return tuple((field, canonical(getattr(layer, field, None))) for field in LAYER_FIELDS)


def core_description(accelerator: Any) -> tuple:
    """A ZigZag core (zigzag Accelerator, or Stream's ZigZagCoreBackend) as ZigZag's cost model sees it: the array,
    every memory level in hierarchy order with its instance and ports, the level graph and the dataflows. The
    core's id and name are left out: identical cores (of one platform, or of two presets) share entries."""
    hierarchy = accelerator.memory_hierarchy
    levels = list(hierarchy.topological_sort())
    index = {id(level): i for i, level in enumerate(levels)}
    return (
        ("array", canonical(accelerator.operational_array)),
        ("levels", tuple(canonical(level) for level in levels)),
        ("edges", tuple(sorted((index[id(a)], index[id(b)]) for a, b in hierarchy.edges()))),
        ("dataflows", canonical(getattr(accelerator, "dataflows", None))),
        ("sharing", canonical(getattr(accelerator, "mem_sharing_list", None))),
    )


def digest(*parts: Any) -> str:
    """sha256 of the canonical parts and the engine versions."""
    return hashlib.sha256(repr((canonical(parts), ENGINE_VERSIONS)).encode()).hexdigest()


# --- the store ----------------------------------------------------------------------------------------------
class CorruptEntry(ValueError):
    """An entry without its checksum, or whose checksum does not match its content."""


def verified(data: bytes) -> bytes:
    """An entry's pickle, once its trailing checksum (`CHECKSUM_MAGIC` + sha256) matches it; raises CorruptEntry."""
    payload, magic, checksum = data.rpartition(CHECKSUM_MAGIC)
    if not magic or len(checksum) != hashlib.sha256().digest_size:
        raise CorruptEntry("it carries no checksum")
    if hashlib.sha256(payload).digest() != checksum:
        raise CorruptEntry("its checksum does not match its content")
    return payload


@dataclass(frozen=True)
class CostCache:
    """One kind of entry (`runner`, `stream`) of one family (`zigzag`; `polynomials`: the analytic sweep's derived
    count polynomials, sweeps/fast.py) under one root."""

    root: Path
    kind: str
    family: str = "zigzag"

    @property
    def folder(self) -> Path:
        return self.root / self.family / self.kind

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pickle"

    def get(self, key: str) -> Any | None:
        """The stored value, or None (absent; unreadable: a partial file from another tool, an old pickle; or
        corrupted: its checksum does not match its content)."""
        path = self.path(key)
        try:
            value = pickle.loads(verified(path.read_bytes()))
        except FileNotFoundError:
            value = None
        except CorruptEntry as exc:
            logger.warning("cost cache: discarding %s: %s; computing it again", path, exc)
            STATS[f"{self.kind}.errors"] += 1
            value = None
        except Exception as exc:  # noqa: BLE001 -- any unreadable entry is a miss
            logger.info("cost cache: ignoring unreadable %s (%s: %s)", path, type(exc).__name__, exc)
            STATS[f"{self.kind}.errors"] += 1
            value = None
        STATS[f"{self.kind}.{'misses' if value is None else 'hits'}"] += 1
        return value

    def put(self, key: str, value: Any) -> None:
        """Write atomically (temp file in the same folder, then os.replace); a failure is logged, never raised."""
        path = self.path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            data += CHECKSUM_MAGIC + hashlib.sha256(data).digest()
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}-", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            tmp = None
            STATS[f"{self.kind}.writes"] += 1
        except Exception as exc:  # noqa: BLE001 -- a read-only or full disk only costs the speed-up
            logger.warning("cost cache: cannot write %s (%s: %s)", path, type(exc).__name__, exc)
            STATS[f"{self.kind}.errors"] += 1
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def entries(self) -> Iterator[Path]:
        return self.folder.glob("*/*.pickle")


def cost_cache(kind: str, family: str = "zigzag") -> CostCache | None:
    """The cache for `kind` under the current root (the environment is read on every call), or None if off."""
    root = cache_root()
    return None if root is None else CostCache(root, kind, family)


def entry_key(kind: str, describe) -> str | None:
    """The digest of `kind` and describe()'s parts, or None when they have no canonical form (or describing fails:
    an unexpected core or layer object). None means: search, and share nothing."""
    try:
        return digest(kind, *describe())
    except Exception as exc:  # noqa: BLE001 -- an odd object only costs the speed-up, never a wrong entry
        logger.info("cost cache: %s entry not cacheable (%s: %s); searching", kind, type(exc).__name__, exc)
        STATS[f"{kind}.uncacheable"] += 1
        return None


def cached_search(kind: str, key: str | None, search):
    """search() answered from the cache entry `key` (an `entry_key`), else run and stored there."""
    cache = cost_cache(kind)
    if cache is None or key is None:
        return search()
    value = cache.get(key)
    if value is None:
        value = search()
        cache.put(key, value)
    return value


# --- Stream's ZigZag cost estimation --------------------------------------------------------------------------
STREAM_BACKEND_GROUP = "stream.core_cost_backends"
STREAM_ENTRY_POINT = "stream-mla-cost-cache"
_DIST_NAME = "stream-mla-cost-cache"


def _stream_backend_classes():
    """Built on first use, so importing this module does not import Stream."""
    from stream.stages.estimation.core_cost_backends import ZigZagBackend
    from stream.stages.estimation.zigzag_cost_estimator import ZigZagCostEstimator

    @dataclass
    class CachedZigZagCostEstimator(ZigZagCostEstimator):
        """Stream's estimator, with its mapping search (`run_zigzag`: layer node + core -> best CME) answered from
        the cost cache. What Stream does around it (cycles per op, the cost entry, the ideal-cycle fallback when
        the search fails) is unchanged, so a hit gives exactly the numbers a search would."""

        def run_zigzag(self, node, core):
            def describe() -> tuple:
                settings = (self.loma_lpf_limit, self.temporal_mapping_type, self.nb_spatial_mappings_generated)
                return layer_description(node), core_description(core.to_zigzag_core()), settings

            key = entry_key("stream", describe) if cost_cache("stream") else None
            return cached_search("stream", key, lambda: super(CachedZigZagCostEstimator, self).run_zigzag(node, core))

    class CachedZigZagBackend(ZigZagBackend):
        """Claims what the ZigZag backend claims, one priority above it (an AIE backend, priority 10, still wins)."""

        name = "zigzag"
        priority = 1

        def make(self, context):
            return CachedZigZagCostEstimator(
                workload=context.workload,
                accelerator=context.accelerator,
                mapping=context.mapping,
                temporal_mapping_type=context.temporal_mapping_type,
                loma_lpf_limit=context.loma_lpf_limit,
                nb_spatial_mappings_generated=context.nb_spatial_mappings_generated,
            )

    return CachedZigZagBackend


class _LazyBackend:
    """The entry-point object: a CachedZigZagBackend created when Stream first loads it."""

    _backend = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if _LazyBackend._backend is None:
            _LazyBackend._backend = _stream_backend_classes()()
        return getattr(_LazyBackend._backend, name)


STREAM_BACKEND = _LazyBackend()


class _Distribution(metadata.Distribution):
    """Declares STREAM_BACKEND under Stream's backend entry-point group, as pyproject.toml would."""

    def read_text(self, filename: str) -> str | None:
        if filename == "METADATA":
            return f"Metadata-Version: 2.1\nName: {_DIST_NAME}\nVersion: {FORMAT}\n"
        if filename == "entry_points.txt":
            return f"[{STREAM_BACKEND_GROUP}]\n{STREAM_ENTRY_POINT} = {__name__}:STREAM_BACKEND\n"
        return None

    def locate_file(self, path) -> Path:
        return Path(__file__).parent / path


class _Finder(metadata.DistributionFinder):
    """importlib.metadata's documented hook for distributions it cannot find on sys.path; imports pass through."""

    def find_spec(self, *args: Any, **kwargs: Any) -> None:
        return None

    def find_distributions(self, context: Any = None) -> Iterator[metadata.Distribution]:
        name = getattr(context, "name", None)
        if name is None or name.replace("_", "-").lower() == _DIST_NAME:
            yield _Distribution()


def _declared() -> bool:
    return any(ep.value.endswith(":STREAM_BACKEND") and ep.module == __name__
               for ep in metadata.entry_points(group=STREAM_BACKEND_GROUP))  # fmt: skip


_registered = False


def register_stream_backend() -> bool:
    """Make Stream cost ZigZag through the cache in this process; True when its backend is the one Stream picks for
    a ZigZag core. A no-op once done, or when the installed distribution declares the entry point itself."""
    from stream import plugins
    from stream.stages.estimation.core_cost_backends import select_backend

    global _registered
    if not _registered:
        if not _declared():
            sys.meta_path.append(_Finder())
            plugins._entry_points.cache_clear()  # Stream scans each group once per process: maybe before this
        _registered = True

    class _ZigZagCore:  # what select_backend reads of a core
        core_type, type = "zigzag.compute", "compute"

    return select_backend(_ZigZagCore()) is STREAM_BACKEND
