"""One self-contained, deterministic HTML report: figures (embedded PNG), claims, platforms, models, versions,
point counts and failed points. No timestamps and no external resources, so two runs give the same bytes."""

import base64
import html
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from stream_mla.claims import claims
from stream_mla.models import PRESETS as MODEL_PRESETS
from stream_mla.platforms import PRESETS as PLATFORM_PRESETS

PACKAGES = ("stream-mla", "stream-dse", "zigzag-dse", "onnx")
FIGURE_TITLES = {"F1": "Operational intensity vs context", "F2": "Latency and energy per decode step",
                 "F3": "Latency vs DRAM bandwidth", "F4": "Latency vs context", "F5": "Prefill comparison",
                 "F6": "Winning-scheme map"}  # fmt: skip
CSS = """body{font-family:sans-serif;max-width:1400px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}td,th{border:1px solid #bbb;padding:3px 6px;
vertical-align:top;text-align:left}th{background:#eee}.PASS{background:#d4f4d4}.FAIL{background:#f8d0d0}
.NODATA{background:#eee}img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}"""


def _table(df: pd.DataFrame, cls: str = "", row_class: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for _, r in df.iterrows():
        attr = f' class="{html.escape(str(r[row_class]).replace(" ", ""))}"' if row_class else ""
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r)
        body.append(f"<tr{attr}>{cells}</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if pd.isna(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def platform_table() -> pd.DataFrame:
    return pd.DataFrame([{"platform": p.name, "peak TFLOP/s": p.peak_flop_per_s / 1e12, "DRAM GB/s": p.dram_gb_s,
                          "ridge FLOP/B": p.ridge_flop_per_byte, "SRAM MB": p.total_sram_bytes / 1e6,
                          "clock GHz": p.clock_ghz, "pJ/MAC": p.mac_pj, "DRAM pJ/bit": p.dram_pj_per_bit}
                         for p in PLATFORM_PRESETS.values()])  # fmt: skip


def model_table() -> pd.DataFrame:
    return pd.DataFrame([m.model_dump() for m in MODEL_PRESETS.values()])


def _figures_html(figures_dir: Path | None) -> str:
    pngs = sorted(Path(figures_dir).glob("F*.png")) if figures_dir and Path(figures_dir).is_dir() else []
    if not pngs:
        return "<p>No figures found (run <code>stream-mla figures</code> first).</p>"
    parts = []
    for png in pngs:
        fid = png.stem.split("_")[0]
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        title = html.escape(f"{fid}: {FIGURE_TITLES.get(fid, png.stem)}")
        parts.append(f'<figure><figcaption><b>{title}</b> ({html.escape(png.name)}; data in '
                     f'{html.escape(png.with_suffix(".csv").name)})</figcaption>'
                     f'<img alt="{title}" src="data:image/png;base64,{data}"></figure>')  # fmt: skip
    return "\n".join(parts)


def write_report(df: pd.DataFrame, figures_dir: str | Path | None, out_html: str | Path) -> Path:
    """Write the report for a result table (all rows; failed rows are listed, ok rows feed the claims)."""
    out_html = Path(out_html)
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    failed = df[df["status"] != "ok"] if "status" in df.columns else df.iloc[:0]
    table = claims(ok)
    counts = (df.assign(status=df.get("status", "ok")).groupby(["engine", "status"]).size().unstack(fill_value=0)
              .reset_index() if len(df) else pd.DataFrame({"engine": [], "ok": []}))  # fmt: skip
    fail_cols = [c for c in ("model", "scheme", "phase", "batch", "context", "platform", "bw_scale", "engine", "error")
                 if c in failed.columns]  # fmt: skip
    fail_html = (_table(failed[fail_cols].sort_values(fail_cols[:-1]).reset_index(drop=True))
                 if len(failed) else "<p>No failed points.</p>")  # fmt: skip
    ver = pd.DataFrame(list(versions().items()), columns=["package", "version"])
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>stream-mla report</title><style>{CSS}</style></head>
<body>
<h1>stream-mla: attention schemes on accelerator platforms</h1>
<p>Reproduction of the claims of Geens &amp; Verhelst (arXiv 2506.02523) as specified in attention-schemes.md §8.
Analytic rows are the roofline of §2 with first-order energy (MAC + DRAM); engine rows come from Stream / ZigZag.
MHA baseline: d_h = 128 (§3).</p>
<h2>Claims</h2>
{_table(table, "claims", row_class="result")}
<h2>Figures</h2>
{_figures_html(Path(figures_dir) if figures_dir else None)}
<h2>Platforms (§10)</h2>
{_table(platform_table())}
<h2>Models (§1.2)</h2>
{_table(model_table())}
<h2>Points</h2>
{_table(counts)}
<h3>Failed points</h3>
{fail_html}
<h2>Versions</h2>
{_table(ver)}
</body></html>
"""
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(body, encoding="utf-8")
    return out_html
