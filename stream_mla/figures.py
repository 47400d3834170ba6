"""Figures F1-F6 of attention-schemes.md §9 from the tidy result table (one row per sweep point).

Every figure function takes the table (ok rows; other rows are dropped) and an output folder and writes
`<id>_<name>.png`, `.svg` and the plotted data as `.csv`; all three are byte-identical across runs. Engine
results (stream, zigzag) are drawn with markers, the analytic roofline as thin lines of the same colour.
A figure whose data is absent raises `NoData`; `make_figures` logs it and goes on.
"""

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import NullLocator

from stream_mla import __version__
from stream_mla.errors import SpecError
from stream_mla.models import resolve_name_or_path
from stream_mla.workloads import registry
from stream_mla.workloads.registry import NAMES as SCHEMES

log = logging.getLogger(__name__)

PLATFORMS = ("edge-npu", "cloud-fusemax", "tpu-v5e-like", "h100-like", "h20-like")
ENGINES = ("stream", "zigzag")  # measured engines, preferred first
MARKERS = {"stream": "o", "zigzag": "s", "stream:keep-softmax": "v", "stream:per-layer": "<",
           "stream:fixed-mapping": "^"}  # fmt: skip
MODEL = "deepseek-v3"
EDGE_MODEL = "deepseek-v2-lite"  # §9 F2: V2-Lite on edge-npu
TIE = 0.05  # F6: top two within 5 % are a tie
L_DECODE = 4096
BASELINE_NOTE = "MHA baseline d_h = 128 (§3)"


class NoData(Exception):
    """The table holds no rows for this figure."""


# ---------------------------------------------------------------------------------------------- table helpers
@functools.cache
def _own_window(model: str) -> int | None:
    try:
        return resolve_name_or_path(model).sliding_window
    except SpecError:  # a config path that is gone: its rows keep whatever window they have
        return None


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Ok rows, one per point key, on the paper's axes (`paper_rows`)."""
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    if "key" in df.columns:
        df = df.drop_duplicates("key")
    return paper_rows(df).reset_index(drop=True)


def paper_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows the paper's figures and claims are about: whole layers, one new token per decode step, the model's
    own attention span (no window override), one precision for every tensor; where a platform was swept at
    several, bf16 (the spec's p = 2) if present, else its first. Multi-token, core-only, windowed and
    mixed-precision rows stay in the store for other views."""
    if "part" not in df.columns:  # a table from before these axes
        return df
    own = df["model"].map(lambda m: _own_window(m) or np.nan)
    same_window = (df["window"].isna() & own.isna()) | (df["window"] == own)
    d = df[(df["part"] == "layer") & (df["queries"] == 1) & same_window & (df["precision"] == df["kv_precision"])
           & (df["precision"] == df["act_precision"])]  # fmt: skip
    pick = d.groupby("platform")["precision"].transform(lambda p: "bf16" if (p == "bf16").any() else min(p))
    return d[d["precision"] == pick]


def select(df: pd.DataFrame, **eq) -> pd.DataFrame:
    """Rows whose columns equal the given values (floats compared with a tolerance; a list means 'any of')."""
    mask = pd.Series(True, index=df.index)
    for col, val in eq.items():
        if isinstance(val, (list, tuple, set)):
            mask &= df[col].isin(list(val))
        elif isinstance(val, float):
            mask &= np.isclose(df[col].astype(float), val)
        else:
            mask &= df[col] == val
    return df[mask]


def ordered(values: Iterable, order: Iterable) -> list:
    """Known values in the given order, then any others sorted."""
    vals, order = set(values), list(order)
    return [v for v in order if v in vals] + sorted(v for v in vals if v not in order)


def platform_model(df: pd.DataFrame, platform: str) -> str:
    """The model a per-platform figure shows: V2-Lite on edge-npu (when present), else V3."""
    models = set(df.loc[df["platform"] == platform, "model"])
    if platform == "edge-npu" and EDGE_MODEL in models:
        return EDGE_MODEL
    return MODEL if MODEL in models or not models else sorted(models)[0]


def engines_in(df: pd.DataFrame) -> list[str]:
    return ordered([e for e in df["engine"].unique() if e != "analytic"], ENGINES)


def short(model: str) -> str:
    return {"deepseek-v3": "V3", "deepseek-v2": "V2", "deepseek-v2-lite": "V2-Lite"}.get(model, model)


def _batches(df: pd.DataFrame) -> list[int]:
    present = sorted(int(b) for b in df["batch"].unique())
    default = [b for b in (1, 32) if b in present]
    return default or present[:2]


# ---------------------------------------------------------------------------------------------- output
def _figure(nrows: int, ncols: int, w: float, h: float, **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(w * ncols, h * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Figure, data: pd.DataFrame, out_dir: Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg, csv = (out_dir / f"{stem}.{ext}" for ext in ("png", "svg", "csv"))
    with matplotlib.rc_context({"svg.hashsalt": "stream-mla", "svg.fonttype": "path"}):
        fig.savefig(png, dpi=110, metadata={"Software": None})
        fig.savefig(svg, metadata={"Date": None, "Creator": None})
    data.to_csv(csv, index=False, float_format="%.6g", lineterminator="\n")
    return [png, svg, csv]


def _scheme_handles(schemes: Iterable[str], engines: Iterable[str] = ()) -> list:
    handles = [Line2D([], [], color=registry.color(s), lw=1.5, label=registry.label(s)) for s in schemes]
    handles += [Line2D([], [], color="k", lw=0.8, label="analytic roofline")] if engines else []
    handles += [Line2D([], [], color="k", lw=0.8, ls="--", label="serial roofline (§8.0)")] if engines else []
    return handles + [Line2D([], [], color="k", marker=MARKERS.get(e, "D"), ls="", label=e) for e in engines]


def small_multiple(ax, title: str, xlabel: str, ylabel: str, bottom: bool, left: bool, size: int = 9) -> None:
    """One panel of a grid: its title, ticks and grid; axis labels on the bottom row and the left column only."""
    ax.set_title(title, fontsize=size + 1)
    ax.tick_params(labelsize=size - 1)
    ax.grid(True, which="major", alpha=0.3)
    if bottom:
        ax.set_xlabel(xlabel, fontsize=size)
    if left:
        ax.set_ylabel(ylabel, fontsize=size)


def _legend_right(fig: Figure, handles: list, title: str | None = None, width: float = 0.15) -> None:
    """One legend for the whole figure, right of the panels (never over data), then the panels laid out beside it."""
    fig.legend(handles=handles, loc="center right", fontsize=9, frameon=False, title=title, title_fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - width, 0.95))


def _lines_and_markers(ax, d: pd.DataFrame, x: str, y: str, xscale: float = 1.0, yscale: float = 1.0) -> list[dict]:
    """Analytic rows as thin lines, engine rows as markers, one colour per scheme, and where engine latencies are
    drawn their serial roofline (§8.0, the reference of a step-by-step engine) as a dashed line; returns the plotted
    points."""
    recs = []
    serial = y == "latency_s" and "serial_bound_s" in d
    for s in ordered(d["scheme"].unique(), SCHEMES):
        ds = d[d["scheme"] == s]
        for eng in ordered(ds["engine"].unique(), ("analytic", *ENGINES)):
            cols = [y, "serial_bound_s"] if serial and eng != "analytic" else [y]
            g = ds[ds["engine"] == eng].groupby(x, as_index=False)[cols].first().sort_values(x)
            xs, ys = g[x].to_numpy(float) * xscale, g[y].to_numpy(float) * yscale
            if eng == "analytic":
                ax.plot(xs, ys, color=registry.color(s), lw=1.0)
            else:
                ax.plot(xs, ys, color=registry.color(s), marker=MARKERS.get(eng, "D"), ls="", ms=6, mec="k", mew=0.5)
            if len(cols) > 1 and g["serial_bound_s"].notna().any():
                ax.plot(xs, g["serial_bound_s"].to_numpy(float) * yscale, color=registry.color(s), lw=0.8, ls="--")
            recs += [{"scheme": s, "engine": eng, x: a, y: b} for a, b in zip(g[x], g[y], strict=True)]
            if len(cols) > 1:
                recs += [{"scheme": s, "engine": f"{eng} serial roofline", x: a, y: b}
                         for a, b in zip(g[x], g["serial_bound_s"], strict=True) if pd.notna(b)]  # fmt: skip
    return recs


# ---------------------------------------------------------------------------------------------- F1
def _close_ridges(ridges: pd.Series, ratio: float = 1.4) -> list[list[str]]:
    """Platforms by ridge, grouped while each ridge is within `ratio` of the previous one."""
    groups: list[list[str]] = []
    for p in ridges.sort_values().index:
        if groups and ridges[p] / ridges[groups[-1][-1]] < ratio:
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def fig_oi(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """F1: operational intensity vs L per scheme (V3 decode), attention-core OI dashed, preset ridges dotted."""
    df = ok_rows(df)
    d = select(df, model=MODEL, phase="decode", bw_scale=1.0)
    if d.empty:
        raise NoData("F1: no V3 decode rows at bw_scale 1")
    batches = _batches(d)
    ridges = d.groupby("platform")["ridge"].first()
    fig, axes = _figure(1, len(batches), 6.5, 5.0, sharey=True)
    recs = []
    for ax, b in zip(axes[0], batches, strict=True):
        db = d[d["batch"] == b]
        for s in ordered(db["scheme"].unique(), SCHEMES):
            g = db[db["scheme"] == s].groupby("context", as_index=False)[["oi", "macs", "dram_bytes"]].first()
            g = g.sort_values("context")
            ax.plot(g["context"], g["oi"], color=registry.color(s), marker=".", lw=1.5, label=registry.label(s))
            recs += [{"batch": b, "kind": "layer", "series": s, "context": c, "oi": o}
                     for c, o in zip(g["context"], g["oi"], strict=True)]  # fmt: skip
            if len(g) >= 2:  # attention core: the L-dependent part, 2 dMAC / dBytes between neighbouring L
                core = 2 * np.diff(g["macs"].to_numpy(float)) / np.diff(g["dram_bytes"].to_numpy(float))
                ctx = g["context"].to_numpy()[1:]
                ax.plot(ctx, core, color=registry.color(s), ls="--", lw=0.8)
                recs += [{"batch": b, "kind": "core", "series": s, "context": c, "oi": o}
                         for c, o in zip(ctx, core, strict=True)]  # fmt: skip
        for p in ordered(ridges.index, PLATFORMS):
            ax.axhline(ridges[p], color="grey", ls=":", lw=0.8)
            recs.append({"batch": b, "kind": "ridge", "series": p, "context": np.nan, "oi": ridges[p]})
        if ax is axes[0, -1]:  # ridge labels right of the last panel, one per cluster of nearby ridges: no overlap
            for names in _close_ridges(ridges):
                mid = float(np.exp(np.mean(np.log([ridges[p] for p in names]))))
                ax.annotate("\n".join(f"{p} ({ridges[p]:.0f})" for p in names), (1.01, mid), va="center",
                            xycoords=("axes fraction", "data"), fontsize=8, color="dimgrey", ha="left")  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="context L (tokens)", title=f"{short(MODEL)} decode, B = {b}")
        ax.set_xscale("log", base=2)
        ax.grid(True, which="major", alpha=0.3)
    axes[0, 0].set_ylabel("operational intensity (FLOP/B)")
    fig.suptitle(f"F1: operational intensity vs context; dotted: platform ridges ({BASELINE_NOTE})", fontsize=11)
    _legend_right(fig, _scheme_handles(ordered(d["scheme"].unique(), SCHEMES)),
                  title="solid: layer\ndashed: attention core", width=0.2)  # fmt: skip
    return _save(fig, pd.DataFrame(recs), out_dir, "F1_oi_vs_context")


# ---------------------------------------------------------------------------------------------- F2
ENERGY_PARTS = (("dram", "DRAM", None), ("onchip", "on-chip (SRAM/RF + transfer)", "..."),
                ("mac", "MAC", "///"), ("static", "static", "xx"))  # fmt: skip


def _energy_parts(r: pd.Series) -> dict:
    return {"dram": r["energy_dram_pj"], "onchip": r["energy_onchip_memory_pj"] + r["energy_onchip_transfer_pj"],
            "mac": r["energy_mac_pj"], "static": r["energy_static_pj"]}  # fmt: skip


def latency_energy_data(df: pd.DataFrame) -> pd.DataFrame:
    """F2's data: per batch, platform (V2-Lite on edge-npu) and scheme at decode L = 4k, the measured engine's row
    where there is one (`source`), else the analytic one: latency, roofline, energy by component, and the analytic
    energy of the point and of MHA on the same platform and batch (the energy panel's unit)."""
    df = ok_rows(df)
    d = select(df, phase="decode", context=L_DECODE, bw_scale=1.0)
    platforms = [p for p in ordered(d["platform"].unique(), PLATFORMS)]
    d = pd.concat([select(d, platform=p, model=platform_model(d, p)) for p in platforms]) if platforms else d
    if d.empty:
        raise NoData(f"F2: no decode rows at L = {L_DECODE}")
    recs = []
    for b in _batches(d):
        for p in platforms:
            dp = select(d, batch=b, platform=p)
            mha = dp[(dp["engine"] == "analytic") & (dp["scheme"] == "mha")]
            mha_e = float(mha["energy_pj"].iloc[0]) if len(mha) else np.nan
            for s in ordered(dp["scheme"].unique(), SCHEMES):
                ds = dp[dp["scheme"] == s]
                ana = ds[ds["engine"] == "analytic"]
                src = next((e for e in ENGINES if e in set(ds["engine"])), "analytic")
                r = ds[ds["engine"] == src].iloc[0]
                recs.append({"batch": b, "platform": p, "model": r["model"], "scheme": s, "source": src,
                             "latency_s": r["latency_s"], "roofline_s": float(r["roofline_s"]),
                             "serial_bound_s": float(r.get("serial_bound_s") or np.nan),
                             **{f"energy_{k}_pj": v for k, v in _energy_parts(r).items()}, "energy_pj": r["energy_pj"],
                             "analytic_energy_pj": float(ana["energy_pj"].iloc[0]) if len(ana) else np.nan,
                             "mha_analytic_energy_pj": mha_e})  # fmt: skip
    return pd.DataFrame(recs)


def _grouped_x(data: pd.DataFrame) -> tuple[list[str], list[str], dict]:
    """Platforms as groups on x and schemes as bars within a group: (platforms, schemes, (platform, scheme) -> x)."""
    platforms = ordered(data["platform"].unique(), PLATFORMS)
    schemes = ordered(data["scheme"].unique(), SCHEMES)
    width = 0.84 / len(schemes)
    x = {(p, s): pi + (si - (len(schemes) - 1) / 2) * width for pi, p in enumerate(platforms)
         for si, s in enumerate(schemes)}  # fmt: skip
    return platforms, schemes, x


def draw_latency_energy(data: pd.DataFrame, axes: np.ndarray) -> None:
    """F2 on a (batches x 2) grid: latency (log, ms) and energy by component relative to the platform's analytic MHA
    energy, platforms grouped on x, one bar per scheme; faded bars are analytic only, a marker names the engine."""
    platforms, schemes, x = _grouped_x(data)
    width = 0.84 / len(schemes)
    for (ax_t, ax_e), (b, db) in zip(axes, data.groupby("batch", sort=True), strict=True):
        for _, r in db.iterrows():
            xi, c, meas = x[(r["platform"], r["scheme"])], registry.color(r["scheme"]), r["source"] != "analytic"
            ax_t.bar(xi, r["latency_s"] * 1e3, width, color=c, alpha=0.85 if meas else 0.45, edgecolor=c)
            ax_t.hlines(r["roofline_s"] * 1e3, xi - width / 2, xi + width / 2, color="k", lw=0.8)
            if meas and np.isfinite(r["serial_bound_s"]):  # a step-by-step engine's reference (§8.0)
                ax_t.hlines(r["serial_bound_s"] * 1e3, xi - width / 2, xi + width / 2, color="k", lw=0.8, ls="--")
            unit, bottom = r["mha_analytic_energy_pj"], 0.0
            for key, _, hatch in ENERGY_PARTS:
                v = float(r[f"energy_{key}_pj"]) / unit
                if v > 0:
                    ax_e.bar(xi, v, width, bottom=bottom, color=c, alpha=0.85 if key == "dram" else 0.4, hatch=hatch,
                             edgecolor="k", lw=0.3)  # fmt: skip
                    bottom += v
            if np.isfinite(r["analytic_energy_pj"]):
                ax_e.hlines(r["analytic_energy_pj"] / unit, xi - width / 2, xi + width / 2, color="k", lw=0.8)
            if meas:
                marker = MARKERS.get(r["source"], "D")
                ax_t.plot(xi, r["latency_s"] * 1e3, marker=marker, color=c, mec="k", ms=5)
                ax_e.plot(xi, r["energy_pj"] / unit, marker=marker, color=c, mec="k", ms=5)
        labels = [f"{p}\n({short(db.loc[db['platform'] == p, 'model'].iloc[0])})" for p in platforms]
        for ax in (ax_t, ax_e):
            ax.set_xticks(range(len(platforms)), labels, fontsize=9)
            ax.grid(True, axis="y", which="major", alpha=0.3)
        ax_t.set(yscale="log", ylabel="latency per layer-step (ms)", title=f"latency, B = {b}")
        ax_e.set(ylabel="energy / MHA's analytic energy", title=f"energy by component, B = {b}")


def fig_latency_energy(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """F2: latency and stacked energy per decode step at L = 4k, per scheme and platform (V2-Lite on edge-npu)."""
    data = latency_energy_data(df)
    fig, axes = _figure(data["batch"].nunique(), 2, 8.0, 4.2)
    draw_latency_energy(data, axes)
    schemes = ordered(data["scheme"].unique(), SCHEMES)
    handles = [Patch(facecolor=registry.color(s), label=registry.label(s)) for s in schemes]
    handles += [Patch(facecolor="grey", alpha=0.85 if k == "dram" else 0.4, hatch=h, edgecolor="k", label=lab)
                for k, lab, h in ENERGY_PARTS]  # fmt: skip
    handles += [Line2D([], [], color="k", lw=0.8, label="analytic roofline / analytic energy")]
    handles += [Line2D([], [], color="k", lw=0.8, ls="--", label="serial roofline (§8.0)")]
    handles += [Line2D([], [], color="k", marker=MARKERS[e], ls="", label=e) for e in ENGINES]
    fig.legend(handles=handles, loc="center right", fontsize=9, frameon=False)
    fig.suptitle(f"F2: latency and energy per layer-step, decode L = {L_DECODE} ({BASELINE_NOTE}); "
                 "faded bars = analytic only", fontsize=11)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 0.83, 0.96))
    return _save(fig, data, out_dir, "F2_latency_energy")


# ---------------------------------------------------------------------------------------------- F3
def bandwidth_sweep(df: pd.DataFrame) -> pd.DataFrame:
    """V3 decode rows of the platform with the most bandwidth scales (cloud-fusemax in the default sweep)."""
    d = select(df, model=MODEL, phase="decode")
    if d.empty:
        return d
    n = d.groupby("platform")["bw_scale"].nunique()
    n = n[n >= 2]
    if n.empty:
        return d.iloc[:0]
    best = "cloud-fusemax" if "cloud-fusemax" in n.index else n.sort_values(ascending=False).index[0]
    return d[d["platform"] == best]


def fig_bandwidth(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """F3: latency vs DRAM bandwidth (log-log), one line per scheme, V3 decode L = 4k."""
    df = ok_rows(df)
    d = bandwidth_sweep(df)
    d = select(d, context=L_DECODE) if len(d) else d
    if d.empty:
        raise NoData(f"F3: no bandwidth sweep (>= 2 bw_scale values on one platform) at L = {L_DECODE}")
    d = d.assign(dram_gb_s=d["dram_bytes_per_s"] / 1e9)
    batches = _batches(d)
    fig, axes = _figure(1, len(batches), 6.0, 5.0)
    recs = []
    for ax, b in zip(axes[0], batches, strict=True):
        db = d[d["batch"] == b]
        for r in _lines_and_markers(ax, db, "dram_gb_s", "latency_s", yscale=1e3):
            recs.append({"batch": b, **r})
        ridge = db.groupby("dram_gb_s")["ridge"].first()
        for gb in (ridge.index.min(), ridge.index.max()):
            ax.annotate(f"R = {ridge[gb]:.3g}", (gb, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                        ha="center", va="bottom")  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="DRAM bandwidth (GB/s)", ylabel="latency per layer-step (ms)")
        ax.set_title(f"{db['platform'].iloc[0]} compute, {short(MODEL)} decode L = {L_DECODE}, B = {b}", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle("F3: latency vs DRAM bandwidth", fontsize=11)
    _legend_right(fig, _scheme_handles(ordered(d["scheme"].unique(), SCHEMES), engines_in(d)))
    data = pd.DataFrame(recs)[["batch", "scheme", "engine", "dram_gb_s", "latency_s"]]
    data["ridge"] = data["dram_gb_s"].map(d.groupby("dram_gb_s")["ridge"].first())
    return _save(fig, data, out_dir, "F3_latency_vs_bandwidth")


# ---------------------------------------------------------------------------------------------- F4
def fig_latency_context(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """F4: latency vs L, small multiples per platform (rows: batch); V2-Lite on edge-npu."""
    df = ok_rows(df)
    d = select(df, phase="decode", bw_scale=1.0)
    platforms = ordered(d["platform"].unique(), PLATFORMS)
    if not platforms:
        raise NoData("F4: no decode rows at bw_scale 1")
    d = pd.concat([select(d, platform=p, model=platform_model(d, p)) for p in platforms])
    batches = _batches(d)
    fig, axes = _figure(len(batches), len(platforms), 3.6, 3.4)
    recs = []
    for bi, b in enumerate(batches):
        for pi, p in enumerate(platforms):
            ax, dp, model = axes[bi, pi], select(d, batch=b, platform=p), platform_model(d, p)
            for r in _lines_and_markers(ax, dp, "context", "latency_s", yscale=1e3):
                recs.append({"batch": b, "platform": p, "model": model, **r})
            ax.set(xscale="log", yscale="log")
            ax.set_xscale("log", base=2)
            small_multiple(ax, f"{p} ({short(model)}), B = {b}", "context L", "latency per layer-step (ms)",
                           bottom=bi == len(batches) - 1, left=pi == 0)  # fmt: skip
    fig.suptitle(f"F4: decode latency vs context ({BASELINE_NOTE})", fontsize=11)
    _legend_right(fig, _scheme_handles(ordered(d["scheme"].unique(), SCHEMES), engines_in(d)), width=0.1)
    return _save(fig, pd.DataFrame(recs), out_dir, "F4_latency_vs_context")


# ---------------------------------------------------------------------------------------------- F5
def prefill_table(df: pd.DataFrame) -> pd.DataFrame:
    """Prefill rows with dense and causal MACs, latency and energy (causal: roofline with macs_causal)."""
    d = select(df, phase="prefill", bw_scale=1.0)
    if d.empty:
        return pd.DataFrame()
    frac = d["macs_causal"] / d["macs"]
    causal_compute = 2 * d["macs_causal"] / d["peak_flop_per_s"]
    return pd.DataFrame({
        "platform": d["platform"], "model": d["model"], "scheme": d["scheme"], "seq": d["context"],
        "batch": d["batch"], "engine": d["engine"], "macs_dense": d["macs"], "macs_causal": d["macs_causal"],
        "latency_dense_s": d["latency_s"],
        "latency_causal_s": np.where(d["engine"] == "analytic",
                                     np.maximum(causal_compute, d["roofline_memory_s"]), np.nan),
        "energy_dense_pj": d["energy_pj"], "energy_causal_pj": d["energy_pj"] - d["energy_mac_pj"] * (1 - frac),
    })  # fmt: skip


def fig_prefill(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """F5: prefill MACs, latency and energy at S in {1k, 4k}, dense (solid) and causal (hatched); engine rows (which
    run the dense graph) as markers on the dense bars."""
    t = prefill_table(ok_rows(df))
    if t.empty:
        raise NoData("F5: no prefill rows")
    model = MODEL if MODEL in set(t["model"]) else sorted(t["model"].unique())[0]
    t = t[(t["model"] == model) & (t["batch"] == t["batch"].min())]
    bars = "analytic" if "analytic" in set(t["engine"]) else engines_in(t)[0]
    measured = t[t["engine"].isin(ENGINES) & (t["engine"] != bars)]  # engine rows: markers on the dense bars
    t = t[t["engine"] == bars]
    platforms = [p for p in ordered(t["platform"].unique(), ("cloud-fusemax", "h100-like", *PLATFORMS))][:2]
    t = t[t["platform"].isin(platforms)].sort_values(["platform", "seq", "scheme"]).reset_index(drop=True)
    metrics = (("macs_dense", "macs_causal", "GMAC per layer", 1e-9),
               ("latency_dense_s", "latency_causal_s", "latency (ms)", 1e3),
               ("energy_dense_pj", "energy_causal_pj", "energy (mJ)", 1e-9))  # fmt: skip
    fig, axes = _figure(len(platforms), 3, 4.6, 3.4)
    for pi, p in enumerate(platforms):
        tp = t[t["platform"] == p]
        seqs, schemes = sorted(tp["seq"].unique()), ordered(tp["scheme"].unique(), SCHEMES)
        width = 0.8 / (2 * len(schemes))
        for mi, (dense_col, causal_col, ylabel, scale) in enumerate(metrics):
            ax = axes[pi, mi]
            for si, s in enumerate(schemes):
                for gi, seq in enumerate(seqs):
                    r = tp[(tp["scheme"] == s) & (tp["seq"] == seq)]
                    if r.empty:
                        continue
                    dense, causal = float(r[dense_col].iloc[0]), float(r[causal_col].iloc[0])
                    x = gi + (2 * si - len(schemes)) * width + width / 2
                    ax.bar(x, dense * scale, width, color=registry.color(s), edgecolor="k", lw=0.3)
                    if np.isfinite(causal):
                        ax.bar(x + width, causal * scale, width, color=registry.color(s), alpha=0.45, hatch="///",
                               edgecolor="k", lw=0.3)  # fmt: skip
                    m = measured[(measured["platform"] == p) & (measured["scheme"] == s) & (measured["seq"] == seq)]
                    if mi > 0 and len(m):  # engines run the dense graph: their latency and energy sit on its bar
                        e = m["engine"].iloc[0]
                        ax.plot(x, float(m[dense_col].iloc[0]) * scale, marker=MARKERS.get(e, "D"), ls="", ms=6,
                                color=registry.color(s), mec="k", mew=0.5)  # fmt: skip
            ax.set_xticks(range(len(seqs)), [f"S = {s // 1024}k" if s % 1024 == 0 else f"S = {s}" for s in seqs])
            ax.set_ylabel(ylabel, fontsize=9)
            ax.set_title(f"{p}, {short(model)} prefill", fontsize=10)
            ax.tick_params(labelsize=8)
    handles = [Patch(facecolor=registry.color(s), edgecolor="k", lw=0.3, label=registry.label(s))
               for s in ordered(t["scheme"].unique(), SCHEMES)]  # fmt: skip
    handles += [Patch(facecolor="grey", edgecolor="k", lw=0.3, label="dense"),
                Patch(facecolor="grey", alpha=0.45, hatch="///", edgecolor="k", lw=0.3, label="causal")]  # fmt: skip
    handles += [Line2D([], [], color="k", marker=MARKERS.get(e, "D"), ls="", label=f"{e} (dense)")
                for e in ordered(measured["engine"].unique(), ENGINES)]  # fmt: skip
    fig.suptitle(f"F5: prefill per layer, B = 1 ({BASELINE_NOTE})", fontsize=11)
    _legend_right(fig, handles, width=0.12)
    return _save(
        fig, pd.concat([t, measured[measured["platform"].isin(platforms)]], ignore_index=True), out_dir, "F5_prefill"
    )


# ---------------------------------------------------------------------------------------------- F6
PAIRS = {"C3b": ("mla-recompute", "mla-naive"), "C3c": ("mla-merged-per-step", "mla-merged")}
EXACT = 1e-12  # top two latencies equal to this relative precision are the same time (an exact tie)
# one pattern per meaning: an exact tie (the top two take the same time) and a near tie (within TIE, not equal)
TIE_HATCH = {"exact": "xxxx", "near": "////"}
TIE_LABEL = {"exact": "tie: top two equal", "near": f"top two within {TIE:.0%}"}
REGION_COLUMNS = ["panel", "batch", "context", "r_lo", "r_hi", "winner", "tie"]
F6_CSV_COLUMNS = ["panel", "batch", "source", "context", "r_lo", "r_hi", "ridge", "winner", "tie", "second", "ratio"]
R_MARGIN = np.sqrt(2.0)  # F6's R axis: the swept and preset ridges, widened by half a factor-2 step each side


def ridge_regions(flops: Iterable[float], dram_bytes: Iterable[float], r_min: float, r_max: float,
                  tie: float = TIE) -> list[tuple[float, float, int, str]]:  # fmt: skip
    """The fastest of n schemes over the ridge R in [r_min, r_max], as exact intervals of R.

    With F_i FLOPs and Q_i DRAM bytes, T_i·BW = max(F_i / R, Q_i) (§2): two latencies, or one against (1 + tie)
    times another, can swap only where some F_i / R meets some Q_j, i.e. at R = F_i / Q_j × {1, 1 + tie,
    1 / (1 + tie)} (i = j: where scheme i turns compute-bound; i ≠ j: §8.1's R* = F_X / Q_Y). Between two
    consecutive candidates the order of the latencies and the tie state are constant, so one evaluation inside each
    interval classifies all of it exactly; no grid is involved. Returns (r_lo, r_hi, winner index, tie), adjacent
    intervals with the same winner and tie merged. tie is "exact" (the top two take the same time: both
    memory-bound on equal bytes, or compute-bound on equal FLOPs), "near" (within `tie`, not equal) or "none". An
    equal time goes to the scheme with fewer FLOPs (it also spends less energy), then fewer bytes, then the first
    listed."""
    f, q = np.asarray(list(flops), float), np.asarray(list(dram_bytes), float)
    cand = (f[:, None] / q[None, :]).ravel()[:, None] * np.array([1.0, 1.0 + tie, 1.0 / (1.0 + tie)])
    cand = np.unique(cand[(cand > r_min) & (cand < r_max)])
    edges = np.concatenate([[r_min], cand, [r_max]])
    out: list[tuple[float, float, int, str]] = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        t = np.maximum(f / np.sqrt(lo * hi), q)
        order = np.lexsort((np.arange(len(f)), q, f, t))  # by time, then FLOPs, bytes, listing order
        ratio = t[order[1]] / t[order[0]] if len(f) > 1 else np.inf
        kind = "exact" if ratio - 1 <= EXACT else "near" if ratio <= 1 + tie else "none"
        if out and out[-1][2:] == (int(order[0]), kind):
            out[-1] = (out[-1][0], float(hi), int(order[0]), kind)
        else:
            out.append((float(lo), float(hi), int(order[0]), kind))
    return out


def winners(d: pd.DataFrame, schemes: Iterable[str], by: list[str]) -> pd.DataFrame:
    """Per group: fastest scheme, runner-up and the ratio T_second / T_first (groups holding all schemes)."""
    schemes = list(schemes)
    d = d[d["scheme"].isin(schemes)]
    recs = []
    for key, g in d.groupby(by, sort=True):
        g = g.drop_duplicates("scheme")
        if len(g) < len(schemes):
            continue
        g = g.sort_values(["latency_s", "scheme"])
        t = g["latency_s"].to_numpy(float)
        recs.append({**dict(zip(by, key, strict=True)), "winner": g["scheme"].iloc[0], "second": g["scheme"].iloc[1],
                     "ratio": t[1] / t[0]})  # fmt: skip
    return pd.DataFrame(recs, columns=[*by, "winner", "second", "ratio"])


def _edges(v: np.ndarray) -> np.ndarray:
    """Band edges around sorted values on a log axis: the log-midpoints, and half a step beyond the ends."""
    lv = np.log(v)
    mid = (lv[1:] + lv[:-1]) / 2
    step0 = (lv[1] - lv[0]) / 2 if len(v) > 1 else 0.5
    step1 = (lv[-1] - lv[-2]) / 2 if len(v) > 1 else 0.5
    return np.exp(np.concatenate([[lv[0] - step0], mid, [lv[-1] + step1]]))


@dataclass(frozen=True)
class _F6Input:
    rows: pd.DataFrame  # ok rows
    grid: pd.DataFrame  # analytic V3 decode rows of the bandwidth sweep: the counts (MACs, bytes per scheme and L)
    batches: list[int]
    panels: list[tuple[str, list[str]]]  # ("all", every scheme), then the C3b / C3c pairs present
    presets: pd.Series  # preset ridges (bw_scale 1)
    r_range: tuple[float, float]


def _f6_input(df: pd.DataFrame) -> _F6Input:
    df = ok_rows(df)
    sweep = bandwidth_sweep(df)
    grid = sweep[sweep["engine"] == "analytic"] if len(sweep) else sweep
    if grid.empty:
        raise NoData("F6: no analytic bandwidth sweep (>= 2 bw_scale values on one platform)")
    panels = [("all", ordered(grid["scheme"].unique(), SCHEMES))]
    panels += [(k, list(v)) for k, v in PAIRS.items() if set(v) <= set(grid["scheme"])]
    presets = select(df, bw_scale=1.0).groupby("platform")["ridge"].first()
    ridges = np.concatenate([grid["ridge"].to_numpy(float), presets.to_numpy(float)])
    r_range = (float(ridges.min() / R_MARGIN), float(ridges.max() * R_MARGIN))
    return _F6Input(df, grid, _batches(grid), panels, presets, r_range)


def _counts_at(gb: pd.DataFrame, schemes: list[str], context: int) -> pd.DataFrame | None:
    """FLOPs and DRAM bytes per scheme at one L (None when a scheme is missing); they do not depend on the ridge."""
    c = gb[(gb["context"] == context) & gb["scheme"].isin(schemes)].groupby("scheme")[["macs", "dram_bytes"]].first()
    if len(c) < len(schemes):
        return None
    c = c.reindex(schemes)
    return pd.DataFrame({"flops": 2 * c["macs"].to_numpy(float), "bytes": c["dram_bytes"].to_numpy(float)},
                        index=schemes)  # fmt: skip


def _regions(inp: _F6Input) -> pd.DataFrame:
    recs = []
    for b in inp.batches:
        gb = inp.grid[inp.grid["batch"] == b]
        for name, schemes in inp.panels:
            for L in sorted(int(c) for c in gb["context"].unique()):
                c = _counts_at(gb, schemes, L)
                if c is None:
                    continue
                for lo, hi, w, kind in ridge_regions(c["flops"], c["bytes"], *inp.r_range):
                    recs.append({"panel": name, "batch": b, "context": L, "r_lo": lo, "r_hi": hi, "winner": schemes[w],
                                 "tie": kind})  # fmt: skip
    return pd.DataFrame(recs, columns=REGION_COLUMNS)


def winner_regions(df: pd.DataFrame) -> pd.DataFrame:
    """F6's map as data: per panel ("all", C3b, C3c), batch and swept L, the exact intervals [r_lo, r_hi) of the
    ridge R where one scheme is fastest (`ridge_regions` on the rows' MACs and DRAM bytes at that L), and their tie
    state (exact, near or none). R spans the swept and preset ridges, widened by √2 each side."""
    return _regions(_f6_input(df))


def _boundary(gb: pd.DataFrame, name: str) -> tuple[str, pd.Series]:
    """The named crossover of a panel per L: L*(R), where recompute turns compute-bound (its OI, C3a; from there it
    ties with absorb), or R*(L) = F_X / Q_Y for a pair (§8.1)."""
    if name == "all":
        rc = gb[gb["scheme"] == "mla-recompute"].groupby("context")[["macs", "dram_bytes"]].first()
        return "L*(R): recompute turns compute-bound (C3a)", (2 * rc["macs"] / rc["dram_bytes"]).dropna()
    x, y = PAIRS[name]
    fx = gb[gb["scheme"] == x].groupby("context")["macs"].first()
    qy = gb[gb["scheme"] == y].groupby("context")["dram_bytes"].first()
    return f"R*(L) = F_{registry.short(x)} / Q_{registry.short(y)} (§8.1)", (2 * fx / qy).dropna()


def _step_line(curve: pd.Series, ctxs: np.ndarray, ye: np.ndarray, r_range: tuple[float, float]) -> tuple:
    """A crossover drawn as the region edge it is: a vertical segment at R*(L) across each L band, joined at the
    band edges; broken (NaN) where R* leaves the axis."""
    xs, ys = [], []
    for i, L in enumerate(ctxs):
        r = curve.get(L, np.nan)
        if not (r_range[0] <= r <= r_range[1]):
            xs.append(np.nan), ys.append(np.nan)
            continue
        xs += [r, r]
        ys += [ye[i], ye[i + 1]]
    return np.array(xs, float), np.array(ys, float)


def fig_winner_map(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """F6: the fastest scheme over (ridge R, L) from exact crossovers; pairwise C3b / C3c panels.

    Each swept L is a band; inside it the regions are the exact R intervals of `winner_regions`, so a colour change
    sits exactly at a crossover. Cross-hatching marks an exact tie, hatching a near one (within TIE); thin black
    lines are region edges, the thick line the panel's named crossover; dotted lines the preset ridges (labelled
    above the panel); markers the engines' winners. The legend sits below the panels, outside the data."""
    inp = _f6_input(df)
    regions = _regions(inp)
    measured = select(inp.rows, model=MODEL, phase="decode")
    measured = measured[measured["engine"] != "analytic"]
    presets, (r_min, r_max) = inp.presets, inp.r_range
    nb, npan = len(inp.batches), len(inp.panels)
    fig, axes = _figure(nb, npan, 5.4, 4.4)
    recs = [regions.assign(source="analytic")]
    edge_label, drawn = "named crossover", set()
    for bi, b in enumerate(inp.batches):
        gb = inp.grid[inp.grid["batch"] == b]
        ctxs = np.sort(gb["context"].unique())
        ye = _edges(ctxs.astype(float))
        mb = measured[measured["batch"] == b]
        for pj, (name, schemes) in enumerate(inp.panels):
            ax = axes[bi, pj]
            rp = regions[(regions["panel"] == name) & (regions["batch"] == b)]
            for r in rp.itertuples():
                i = int(np.searchsorted(ctxs, r.context))
                xy, w, h = (r.r_lo, ye[i]), r.r_hi - r.r_lo, ye[i + 1] - ye[i]
                ax.add_patch(Rectangle(xy, w, h, facecolor=registry.color(r.winner), edgecolor="none", zorder=1))
                if r.tie in TIE_HATCH:
                    ax.add_patch(Rectangle(xy, w, h, fill=False, hatch=TIE_HATCH[r.tie], lw=0, edgecolor="k",
                                           alpha=0.6, zorder=2))  # fmt: skip
                if r.r_lo > r_min:  # an interior edge: a crossover or a change of tie state
                    ax.vlines(r.r_lo, ye[i], ye[i + 1], color="k", lw=0.5, zorder=3)
            label, curve = _boundary(gb, name) if name != "all" or "mla-recompute" in schemes else ("", pd.Series())
            if len(curve):
                xs, ys = _step_line(curve, ctxs, ye, inp.r_range)
                ax.plot(xs, ys, color="k", lw=2.0, zorder=4)
                recs.append(pd.DataFrame({"panel": name, "batch": b, "source": "boundary", "context": curve.index,
                                          "ridge": curve.to_numpy(float)}))  # fmt: skip
            for p in ordered(presets.index, PLATFORMS):
                ax.axvline(presets[p], color="k", ls=":", lw=0.9, zorder=4)
            for eng in engines_in(mb):
                we = winners(mb[mb["engine"] == eng], schemes, ["platform", "bw_scale", "ridge", "context"])
                for r in we.itertuples():
                    ax.plot(r.ridge, r.context, marker=MARKERS.get(eng, "D"), ms=8, color=registry.color(r.winner),
                            mec="k" if r.ratio <= 1 + TIE else "w", mew=1.5, zorder=5)  # fmt: skip
                recs.append(we.assign(panel=name, batch=b, source=eng))
                drawn |= {eng} if len(we) else set()
            ax.set(xscale="log", yscale="log", xlim=(r_min, r_max), ylim=(ye[0], ye[-1]))
            ax.set_yscale("log", base=2)
            if len(presets):  # named on a top axis, outside the data: one label per cluster of nearby ridges
                top = ax.secondary_xaxis("top")
                groups = _close_ridges(presets)
                top.set_xticks([presets[g[0]] for g in groups], [", ".join(g) for g in groups], fontsize=6,
                               rotation=25, ha="left", rotation_mode="anchor")  # fmt: skip
                top.xaxis.set_minor_locator(NullLocator())
                top.tick_params(length=3, pad=1)
            pair = " vs ".join(registry.label(s) for s in schemes[:2])
            title = "fastest scheme" if name == "all" else f"{name}: {pair}"
            ax.set_title(f"{title}, {short(MODEL)} B = {b}\nthick: {label}" if label else title, fontsize=8)
            ax.set_xlabel("platform ridge R (FLOP/B)", fontsize=8)
            ax.set_ylabel("context L", fontsize=8)
            ax.tick_params(labelsize=7)
    engines = [e for e in engines_in(measured) if e in drawn]  # only engines with a marker in some panel
    handles = [Patch(color=registry.color(s), label=registry.label(s)) for s in inp.panels[0][1]]
    handles += [Patch(facecolor="w", hatch=TIE_HATCH[k], edgecolor="k", label=TIE_LABEL[k]) for k in TIE_HATCH]
    handles += [Line2D([], [], color="k", lw=0.5, label="region edge (exact)"),
                Line2D([], [], color="k", lw=2.0, label=edge_label + " (see title)"),
                Line2D([], [], color="k", ls=":", lw=0.9, label="preset ridge")]  # fmt: skip
    handles += [Line2D([], [], color="grey", marker=MARKERS.get(e, "D"), ls="", mec="k", label=f"{e} winner "
                       f"(black edge: within {TIE:.0%})") for e in engines]  # fmt: skip
    ncol = min(len(handles), 6)
    legend_in = 0.22 * -(-len(handles) // ncol) + 0.15
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.suptitle("F6: winning scheme by platform ridge and context (analytic roofline, exact crossovers per L; "
                 "markers: engines)", fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 0.97))
    data = pd.concat([r for r in recs if len(r)], ignore_index=True).reindex(columns=F6_CSV_COLUMNS)
    return _save(fig, data, out_dir, "F6_winner_map")


# ---------------------------------------------------------------------------------------------- all
FIGURES: dict[str, Callable[[pd.DataFrame, Path], list[Path]]] = {
    "F1": fig_oi, "F2": fig_latency_energy, "F3": fig_bandwidth, "F4": fig_latency_context, "F5": fig_prefill,
    "F6": fig_winner_map,
}  # fmt: skip


STAMP = ".figures.json"  # in a figures folder: the digest of the rows drawn and the files drawn from them
FIGURE_SUFFIXES = (".png", ".svg", ".csv")


def rows_digest(df: pd.DataFrame) -> str:
    """sha256 of the ok rows a figure can draw (one per key, in key order): what `report` checks a figures
    folder's stamp against, so that it never embeds figures drawn from other rows."""
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    if "key" in ok.columns:
        ok = ok.drop_duplicates("key").sort_values("key", kind="stable")
    ok = ok.reset_index(drop=True).sort_index(axis=1)
    return hashlib.sha256(pd.util.hash_pandas_object(ok, index=False).to_numpy().tobytes()).hexdigest()


def read_stamp(out_dir: str | Path) -> dict | None:
    """A figures folder's stamp ({"digest", "rows", "files"}), or None where there is none readable."""
    try:
        stamp = json.loads((Path(out_dir) / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and isinstance(stamp.get("files"), list) else None


def make_figures(df: pd.DataFrame, out_dir: str | Path, only: Iterable[str] | None = None) -> list[Path]:
    """Every figure that has data; a figure without data is skipped with a logged note.

    Figures are a pure function of the table: when `out_dir` holds the files drawn from the same rows by the
    same code (a stamp file records the digest), they are reused instead of drawn again. The folder then holds
    only this table's figures: figure files of an earlier run that this one did not draw are removed, and the
    stamp is removed while drawing and written (atomically) once every file is."""
    import contextlib

    from stream_mla.io import atomic

    out = Path(out_dir)
    wanted = [fid for fid in FIGURES if only is None or fid in only]
    rows = rows_digest(df)
    code = Path(__file__).read_bytes()  # a changed figure function must redraw
    digest = hashlib.sha256(rows.encode() + code + f"{__version__} {wanted}".encode()).hexdigest()
    stamp = out / STAMP
    cached = read_stamp(out)
    if cached is not None and cached.get("digest") == digest:
        files = [out / f for f in cached["files"]]
        if all(f.is_file() for f in files):
            return files
    with contextlib.suppress(FileNotFoundError):
        stamp.unlink()  # a run stopped midway leaves no stamp: `report` then refuses the folder
    files: list[Path] = []
    for fid in wanted:
        try:
            files += FIGURES[fid](df, out)
        except NoData as exc:
            log.warning("skipped %s", exc)
    out.mkdir(parents=True, exist_ok=True)
    drawn = {f.name for f in files}
    for f in out.iterdir():  # an earlier run's figures that this table does not give
        if f.suffix in FIGURE_SUFFIXES and f.name.split("_")[0] in FIGURES and f.name not in drawn:
            f.unlink()
    with atomic(stamp) as tmp:
        tmp.write_text(json.dumps({"digest": digest, "rows": rows, "files": [f.name for f in files]}) + "\n")
    return files
