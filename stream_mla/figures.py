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
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

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


def _scheme_legend(ax, schemes: Iterable[str], engines: Iterable[str] = (), extra: Iterable = ()) -> None:
    handles = [Line2D([], [], color=registry.color(s), lw=1.5, label=registry.label(s)) for s in schemes]
    handles += [Line2D([], [], color="k", lw=0.8, label="analytic roofline")] if engines else []
    handles += [Line2D([], [], color="k", marker=MARKERS.get(e, "D"), ls="", label=e) for e in engines]
    ax.legend(handles=handles + list(extra), fontsize=7, loc="best")


def _lines_and_markers(ax, d: pd.DataFrame, x: str, y: str, xscale: float = 1.0, yscale: float = 1.0) -> list[dict]:
    """Analytic rows as thin lines, engine rows as markers, one colour per scheme; returns the plotted points."""
    recs = []
    for s in ordered(d["scheme"].unique(), SCHEMES):
        ds = d[d["scheme"] == s]
        for eng in ordered(ds["engine"].unique(), ("analytic", *ENGINES)):
            g = ds[ds["engine"] == eng].groupby(x, as_index=False)[y].first().sort_values(x)
            xs, ys = g[x].to_numpy(float) * xscale, g[y].to_numpy(float) * yscale
            if eng == "analytic":
                ax.plot(xs, ys, color=registry.color(s), lw=1.0)
            else:
                ax.plot(xs, ys, color=registry.color(s), marker=MARKERS.get(eng, "D"), ls="", ms=6, mec="k", mew=0.5)
            recs += [{"scheme": s, "engine": eng, x: a, y: b} for a, b in zip(g[x], g[y], strict=True)]
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
        for names in _close_ridges(ridges):  # one label per cluster of nearby ridges, so labels never overlap
            ax.annotate(", ".join(f"{p} ({ridges[p]:.0f})" for p in names), (0.99, ridges[names[0]]),
                        xycoords=("axes fraction", "data"), fontsize=6, color="grey", va="top", ha="right")  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="context L (tokens)", title=f"{short(MODEL)} decode, B = {b}")
        ax.set_xscale("log", base=2)
        ax.grid(True, which="major", alpha=0.3)
    axes[0, 0].set_ylabel("operational intensity (FLOP/B)")
    axes[0, 0].legend(fontsize=7, loc="upper left", title="solid: layer, dashed: attention core", title_fontsize=7)
    fig.suptitle(f"F1: operational intensity vs context; dotted: platform ridges ({BASELINE_NOTE})", fontsize=10)
    fig.tight_layout()
    return _save(fig, pd.DataFrame(recs), out_dir, "F1_oi_vs_context")


# ---------------------------------------------------------------------------------------------- F2
ENERGY_PARTS = (("dram", "DRAM", None), ("onchip", "on-chip (SRAM/RF + transfer)", "..."),
                ("mac", "MAC", "///"), ("static", "static", "xx"))  # fmt: skip


def _energy_parts(r: pd.Series) -> dict:
    return {"dram": r["energy_dram_pj"], "onchip": r["energy_onchip_memory_pj"] + r["energy_onchip_transfer_pj"],
            "mac": r["energy_mac_pj"], "static": r["energy_static_pj"]}  # fmt: skip


def fig_latency_energy(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """F2: latency and stacked energy per decode step at L = 4k, per scheme and platform (V2-Lite on edge-npu).

    Bars show the measured engine where there is one (a marker on top names it), else the analytic roofline;
    the roofline value is always drawn as a thin line of the scheme's colour.
    """
    df = ok_rows(df)
    d = select(df, phase="decode", context=L_DECODE, bw_scale=1.0)
    platforms = [p for p in ordered(d["platform"].unique(), PLATFORMS)]
    d = pd.concat([select(d, platform=p, model=platform_model(d, p)) for p in platforms]) if platforms else d
    if d.empty:
        raise NoData(f"F2: no decode rows at L = {L_DECODE}")
    batches = _batches(d)
    fig, axes = _figure(2 * len(batches), len(platforms), 3.6, 3.0)
    recs = []
    for bi, b in enumerate(batches):
        for pi, p in enumerate(platforms):
            ax_t, ax_e = axes[2 * bi, pi], axes[2 * bi + 1, pi]
            dp = select(d, batch=b, platform=p)
            schemes = ordered(dp["scheme"].unique(), SCHEMES)
            for i, s in enumerate(schemes):
                ds = dp[dp["scheme"] == s]
                ana = ds[ds["engine"] == "analytic"]
                meas = [e for e in ENGINES if e in set(ds["engine"])]
                src = meas[0] if meas else "analytic"
                r = ds[ds["engine"] == src].iloc[0]
                roof = float(r["roofline_s"])
                ana_e = float(ana["energy_pj"].iloc[0]) if len(ana) else np.nan
                c = registry.color(s)
                ax_t.bar(i, r["latency_s"] * 1e3, color=c, alpha=0.85 if meas else 0.45, edgecolor=c)
                ax_t.hlines(roof * 1e3, i - 0.45, i + 0.45, color=c, lw=1.0)
                parts, bottom = _energy_parts(r), 0.0
                for key, _, hatch in ENERGY_PARTS:
                    v = float(parts[key]) * 1e-9
                    if v > 0:
                        ax_e.bar(i, v, bottom=bottom, color=c, alpha=0.85 if key == "dram" else 0.4, hatch=hatch,
                                 edgecolor="k", lw=0.3)  # fmt: skip
                        bottom += v
                if np.isfinite(ana_e):
                    ax_e.hlines(ana_e * 1e-9, i - 0.45, i + 0.45, color=c, lw=1.0)
                if meas:
                    ax_t.plot(i, r["latency_s"] * 1e3, marker=MARKERS.get(src, "D"), color=c, mec="k", ms=5)
                    ax_e.plot(i, r["energy_pj"] * 1e-9, marker=MARKERS.get(src, "D"), color=c, mec="k", ms=5)
                recs.append({"batch": b, "platform": p, "model": r["model"], "scheme": s, "source": src,
                             "latency_s": r["latency_s"], "roofline_s": roof, **{f"energy_{k}_pj": v for k, v in
                             parts.items()}, "energy_pj": r["energy_pj"], "analytic_energy_pj": ana_e})  # fmt: skip
            for ax in (ax_t, ax_e):
                ax.set_xticks(range(len(schemes)), [registry.label(s) for s in schemes], rotation=60, fontsize=7)
                ax.tick_params(axis="y", labelsize=7)
            ax_t.set_title(f"{p} ({short(platform_model(d, p))}), B = {b}", fontsize=8)
            ax_t.set_ylabel("latency (ms)", fontsize=7)
            ax_e.set_ylabel("energy (mJ)", fontsize=7)
    handles = [Patch(facecolor="grey", alpha=0.85 if k == "dram" else 0.4, hatch=h, edgecolor="k", label=lab)
               for k, lab, h in ENERGY_PARTS]  # fmt: skip
    handles += [Line2D([], [], color="k", lw=1.0, label="analytic roofline")]
    handles += [Line2D([], [], color="k", marker=MARKERS[e], ls="", label=e) for e in ENGINES]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(f"F2: latency and energy per layer-step, decode L = {L_DECODE} ({BASELINE_NOTE}); "
                 "faded bars = analytic only", fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return _save(fig, pd.DataFrame(recs), out_dir, "F2_latency_energy")


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
        _scheme_legend(ax, ordered(db["scheme"].unique(), SCHEMES), engines_in(db))
    fig.suptitle("F3: latency vs DRAM bandwidth", fontsize=10)
    fig.tight_layout()
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
    fig, axes = _figure(len(batches), len(platforms), 3.6, 3.3)
    recs = []
    for bi, b in enumerate(batches):
        for pi, p in enumerate(platforms):
            ax, dp, model = axes[bi, pi], select(d, batch=b, platform=p), platform_model(d, p)
            for r in _lines_and_markers(ax, dp, "context", "latency_s", yscale=1e3):
                recs.append({"batch": b, "platform": p, "model": model, **r})
            ax.set(xscale="log", yscale="log")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{p} ({short(model)}), B = {b}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="major", alpha=0.3)
            if bi == len(batches) - 1:
                ax.set_xlabel("context L", fontsize=8)
            if pi == 0:
                ax.set_ylabel("latency per layer-step (ms)", fontsize=8)
    _scheme_legend(axes[0, 0], ordered(d["scheme"].unique(), SCHEMES), engines_in(d))
    fig.suptitle(f"F4: decode latency vs context ({BASELINE_NOTE})", fontsize=10)
    fig.tight_layout()
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
    """F5: prefill MACs, latency and energy at S in {1k, 4k}, dense (solid) and causal (hatched)."""
    t = prefill_table(ok_rows(df))
    if t.empty:
        raise NoData("F5: no prefill rows")
    model = MODEL if MODEL in set(t["model"]) else sorted(t["model"].unique())[0]
    t = t[(t["model"] == model) & (t["batch"] == t["batch"].min())]
    t = t[t["engine"] == ("analytic" if "analytic" in set(t["engine"]) else engines_in(t)[0])]
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
                    lab = registry.label(s) if gi == 0 else None
                    ax.bar(x, dense * scale, width, color=registry.color(s), label=lab, edgecolor="k", lw=0.3)
                    if np.isfinite(causal):
                        ax.bar(x + width, causal * scale, width, color=registry.color(s), alpha=0.45, hatch="///",
                               edgecolor="k", lw=0.3)  # fmt: skip
            ax.set_xticks(range(len(seqs)), [f"S = {s // 1024}k" if s % 1024 == 0 else f"S = {s}" for s in seqs])
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_title(f"{p}, {short(model)} prefill", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, title="solid dense, hatched causal", title_fontsize=7)
    fig.suptitle(f"F5: prefill per layer, B = 1 ({BASELINE_NOTE})", fontsize=10)
    fig.tight_layout()
    return _save(fig, t, out_dir, "F5_prefill")


# ---------------------------------------------------------------------------------------------- F6
PAIRS = {"C3b": ("mla-recompute", "mla-naive"), "C3c": ("mla-merged-per-step", "mla-merged")}


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
    lv = np.log(v)
    mid = (lv[1:] + lv[:-1]) / 2
    step0 = (lv[1] - lv[0]) / 2 if len(v) > 1 else 0.5
    step1 = (lv[-1] - lv[-2]) / 2 if len(v) > 1 else 0.5
    return np.exp(np.concatenate([[lv[0] - step0], mid, [lv[-1] + step1]]))


def fig_winner_map(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """F6: fastest scheme over (ridge R of the bandwidth sweep, L), hatched ties; pairwise C3b / C3c panels."""
    df = ok_rows(df)
    sweep = bandwidth_sweep(df)
    grid = sweep[sweep["engine"] == "analytic"] if len(sweep) else sweep
    if grid.empty:
        raise NoData("F6: no analytic bandwidth sweep (>= 2 bw_scale values on one platform)")
    batches = _batches(grid)
    panels = [("all", ordered(grid["scheme"].unique(), SCHEMES))]
    panels += [(k, list(v)) for k, v in PAIRS.items() if set(v) <= set(grid["scheme"])]
    measured = select(df, model=MODEL, phase="decode")
    measured = measured[measured["engine"] != "analytic"]
    presets = select(df, bw_scale=1.0).groupby("platform")["ridge"].first()
    fig, axes = _figure(len(batches), len(panels), 5.4, 4.6)
    recs = []
    for bi, b in enumerate(batches):
        gb = grid[grid["batch"] == b]
        ridges, ctxs = np.sort(gb["ridge"].unique()), np.sort(gb["context"].unique())
        for pj, (name, schemes) in enumerate(panels):
            ax = axes[bi, pj]
            w = winners(gb, schemes, ["ridge", "context"])
            cmap = ListedColormap([registry.color(s) for s in schemes])
            z = np.full((len(ctxs), len(ridges)), np.nan)
            xe, ye = _edges(ridges), _edges(ctxs.astype(float))
            for r in w.itertuples():
                i, j = np.searchsorted(ctxs, r.context), np.searchsorted(ridges, r.ridge)
                z[i, j] = schemes.index(r.winner)
                if r.ratio <= 1 + TIE:
                    ax.add_patch(Rectangle((xe[j], ye[i]), xe[j + 1] - xe[j], ye[i + 1] - ye[i], fill=False,
                                           hatch="///", lw=0, edgecolor="k", zorder=2))  # fmt: skip
                recs.append({"panel": name, "batch": b, "source": "analytic", "ridge": r.ridge, "context": r.context,
                             "winner": r.winner, "second": r.second, "ratio": r.ratio})  # fmt: skip
            ax.pcolormesh(xe, ye, np.ma.masked_invalid(z), cmap=cmap, vmin=-0.5, vmax=len(schemes) - 0.5)
            ax.set(xscale="log", yscale="log", xlim=(xe[0], xe[-1]), ylim=(ye[0], ye[-1]))
            ax.set_yscale("log", base=2)
            # boundaries: L*(R) where recompute turns compute-bound (C3a), R*(L) = F_X / Q_Y for the pairs
            bounds = {"all": ("L*(R) absorb|recompute", "mla-recompute", None)}
            bounds.update({k: (f"R*(L) {k}", x, y) for k, (x, y) in PAIRS.items()})
            label, xs, ys = bounds[name]
            fx = gb[gb["scheme"] == xs].groupby("context")[["macs", "oi"]].first()
            if ys is None:
                curve = fx["oi"]
            else:
                qy = gb[gb["scheme"] == ys].groupby("context")["dram_bytes"].first()
                curve = (2 * fx["macs"] / qy).dropna()
            ax.plot(curve.to_numpy(float), curve.index.to_numpy(float), color="k", lw=1.5, label=label)
            recs += [{"panel": name, "batch": b, "source": "boundary", "ridge": x, "context": c, "winner": "",
                      "second": "", "ratio": np.nan} for c, x in curve.items()]  # fmt: skip
            for p in ordered(presets.index, PLATFORMS):
                ax.axvline(presets[p], color="w", ls=":", lw=1.0)
                ax.annotate(p, (presets[p], 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=6,
                            va="top", ha="right", color="k")  # fmt: skip
            mb = measured[measured["batch"] == b]
            for eng in engines_in(mb):
                we = winners(mb[mb["engine"] == eng], schemes, ["platform", "bw_scale", "ridge", "context"])
                for r in we.itertuples():
                    ax.plot(r.ridge, r.context, marker=MARKERS.get(eng, "D"), ms=8, color=registry.color(r.winner),
                            mec="w" if r.ratio > 1 + TIE else "k", mew=1.5)  # fmt: skip
                    recs.append({"panel": name, "batch": b, "source": eng, "ridge": r.ridge, "context": r.context,
                                 "winner": r.winner, "second": r.second, "ratio": r.ratio})  # fmt: skip
            pair = " vs ".join(registry.label(s) for s in schemes[:2])
            title = "fastest scheme" if name == "all" else f"{name}: {pair}"
            ax.set_title(f"{title}, {short(MODEL)} B = {b}", fontsize=9)
            ax.set_xlabel("platform ridge R (FLOP/B)", fontsize=8)
            ax.set_ylabel("context L", fontsize=8)
            handles = [Patch(color=registry.color(s), label=registry.label(s)) for s in schemes]
            handles += [Patch(facecolor="w", hatch="///", edgecolor="k", label=f"top two within {TIE:.0%}"),
                        Line2D([], [], color="k", lw=1.5, label=label)]  # fmt: skip
            handles += [Line2D([], [], color="grey", marker=MARKERS.get(e, "D"), ls="", label=f"{e} winner")
                        for e in engines_in(mb)]  # fmt: skip
            ax.legend(handles=handles, fontsize=6, loc="lower left")
    fig.suptitle("F6: winning scheme by platform ridge and context (analytic roofline; markers: engines)", fontsize=10)
    fig.tight_layout()
    return _save(fig, pd.DataFrame(recs), out_dir, "F6_winner_map")


# ---------------------------------------------------------------------------------------------- all
FIGURES: dict[str, Callable[[pd.DataFrame, Path], list[Path]]] = {
    "F1": fig_oi, "F2": fig_latency_energy, "F3": fig_bandwidth, "F4": fig_latency_context, "F5": fig_prefill,
    "F6": fig_winner_map,
}  # fmt: skip


def make_figures(df: pd.DataFrame, out_dir: str | Path, only: Iterable[str] | None = None) -> list[Path]:
    """Every figure that has data; a figure without data is skipped with a logged note.

    Figures are a pure function of the table: when `out_dir` holds the files drawn from the same rows by the
    same code (a stamp file records the digest), they are reused instead of drawn again."""
    out = Path(out_dir)
    wanted = [fid for fid in FIGURES if only is None or fid in only]
    rows = pd.util.hash_pandas_object(df.sort_index(axis=1), index=False).to_numpy().tobytes()
    code = Path(__file__).read_bytes()  # a changed figure function must redraw
    digest = hashlib.sha256(rows + code + f"{__version__} {wanted}".encode()).hexdigest()
    stamp = out / ".figures.json"
    if stamp.is_file():
        cached = json.loads(stamp.read_text())
        files = [out / f for f in cached["files"]]
        if cached["digest"] == digest and all(f.is_file() for f in files):
            return files
    files: list[Path] = []
    for fid in wanted:
        try:
            files += FIGURES[fid](df, out)
        except NoData as exc:
            log.warning("skipped %s", exc)
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"digest": digest, "files": [f.name for f in files]}) + "\n")
    return files
