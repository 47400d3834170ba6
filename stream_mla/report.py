"""One self-contained, deterministic HTML report that answers first: one sentence per claim with its verdict per
engine, and per swept platform the recommended decode scheme at a few contexts with its reason; then the figures
(embedded PNG); then the evidence (every claim check, the platforms and models actually swept, point counts,
failed points) in collapsible sections; versions. No timestamps and no external resources, so two runs give the
same bytes."""

import base64
import html
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from stream_mla.advise import recommend
from stream_mla.claims import FAIL, Check, ClaimResults, evaluate_claims, expectation, failure, fmt_value
from stream_mla.errors import SpecError, short_path
from stream_mla.figures import STAMP, ordered, read_stamp, rows_digest
from stream_mla.models import resolve_name_or_path
from stream_mla.platforms import PRESETS as PLATFORM_PRESETS
from stream_mla.workloads import registry

PACKAGES = ("stream-mla", "stream-dse", "zigzag-dse", "onnx")
FIGURE_TITLES = {"F1": "Operational intensity vs context", "F2": "Latency and energy per decode step",
                 "F3": "Latency vs DRAM bandwidth", "F4": "Latency vs context", "F5": "Prefill comparison",
                 "F6": "Winning-scheme map"}  # fmt: skip
CSS = """body{font-family:sans-serif;max-width:1400px;margin:1em auto;color:#222}h1{font-size:1.4em;margin:.3em 0}
h2{font-size:1.15em;margin:.8em 0 .3em}p{margin:.3em 0}ol.answers{margin:.3em 0;padding-left:1.5em}
ol.answers li{margin:.15em 0}table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
td,th{border:1px solid #bbb;padding:2px 6px;vertical-align:top;text-align:left}th{background:#eee}
.PASS{background:#d4f4d4}.FAIL{background:#f8d0d0}.NODATA{background:#eee}.v{padding:0 4px;border-radius:3px}
details{margin:.4em 0}summary{cursor:pointer;font-weight:bold}img{max-width:100%;border:1px solid #ddd}
figure{margin:1.5em 0}li,td{overflow-wrap:anywhere}"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if pd.isna(v) else f"{v:.4g}"
    return "" if v is None or v is pd.NA else str(v)


def _table(df: pd.DataFrame, cls: str = "", row_class: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for _, r in df.iterrows():
        attr = f' class="{_css(r[row_class])}"' if row_class else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _css(verdict: str) -> str:
    return html.escape(str(verdict).replace(" ", ""))


def _badge(text: str, verdict: str) -> str:
    return f'<span class="v {_css(verdict)}">{html.escape(text)}</span>'


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ---------------------------------------------------------------------------------------------- answers
def answers_html(results: ClaimResults) -> str:
    """One sentence per claim: its statement, the verdict per engine, and the first failing engine's reason."""
    items = []
    for s in results.summaries:
        per = " ".join(_badge(f"{e.engine} {e.verdict}", e.verdict) for e in s.engines)
        fail = next((e for e in s.engines if e.verdict == FAIL), None)
        why = f" <i>{html.escape(failure(fail))}</i>" if fail else ""
        items.append(f"<li><b>{html.escape(s.claim)}</b> {html.escape(s.statement)}: {per}{why}</li>")
    return f'<ol class="answers">{"".join(items)}</ol>'


def execution_table(results: ClaimResults) -> pd.DataFrame:
    """The engine checks judged on the serial model (§8.0) where it departs from the overlapped one: the quantity
    on each model and as the engine measured it."""
    rows = [{"claim": c.claim, "engine": c.engine, "quantity": c.quantity, "overlapped roofline": c.overlapped,
             "serial roofline": c.serial, "measured": c.measured, "verdict": c.verdict}
            for c in results.checks if c.serial is not None and c.note.startswith("Execution model")]  # fmt: skip
    return pd.DataFrame(rows, columns=["claim", "engine", "quantity", "overlapped roofline", "serial roofline",
                                       "measured", "verdict"])  # fmt: skip


def execution_html(results: ClaimResults, ok: pd.DataFrame) -> str:
    """What the serial model predicts and what the engines measured: a sentence over the engine rows' ratios to
    both rooflines, then `execution_table`."""
    e = ok[ok["engine"] != "analytic"] if "serial_ratio" in ok else ok.iloc[:0]
    e = e[e["serial_ratio"].notna()]
    if e.empty:
        return "<p>No engine rows carry the serial roofline.</p>"
    roof = e["latency_s"] / e["roofline_s"]
    text = (f"Kernels and Stream's fused groups run one after another, so an engine is judged against the serial "
            f"roofline (every step at its own roofline, in turn), not the overlapped one. The {len(e)} engine rows "
            f"take {e['serial_ratio'].min():.2f}-{e['serial_ratio'].max():.2f}x (median "
            f"{e['serial_ratio'].median():.2f}x) the serial roofline and {roof.min():.2f}-{roof.max():.2f}x the "
            "overlapped one.")  # fmt: skip
    table = execution_table(results)
    return f"<p>{html.escape(text)}</p>" + (_table(table, "checks", row_class="verdict") if len(table) else "")


def recommendation_table(ok: pd.DataFrame) -> pd.DataFrame:
    """Per swept platform and stored context (1k, 4k, 32k), the fastest scheme by the stored analytic rows."""
    recs = [{"platform": a.platform, "model": a.model, "B": a.batch, "L": a.context, "precision": a.precision,
             "recommended": a.label, "runner-up": registry.label(a.next_scheme) if a.next_scheme else "",
             "margin": f"{a.margin:.2f}x" if a.margin else "", "latency ms": a.latency_s * 1e3, "reason": a.reason}
            for a in recommend(ok)]  # fmt: skip
    t = pd.DataFrame(recs, columns=["platform", "model", "B", "L", "precision", "recommended", "runner-up", "margin",
                                    "latency ms", "reason"])  # fmt: skip
    return t.drop(columns=["precision"]) if t["precision"].nunique() <= 1 else t


# ---------------------------------------------------------------------------------------------- evidence
def checks_table(checks: list[Check]) -> pd.DataFrame:
    return pd.DataFrame([{"verdict": c.verdict, "engine": c.engine, "quantity": c.quantity,
                          "measured": fmt_value(c.measured), "predicted": expectation(c),
                          "reason / note": c.reason or c.note,
                          "evidence": "; ".join(f"{e.where} = {e.value:.4g}" for e in c.evidence)}
                         for c in checks])  # fmt: skip


def evidence_html(results: ClaimResults) -> str:
    parts = []
    for s in results.summaries:
        checks = results.of(s.claim)
        n_fail = sum(c.verdict == FAIL for c in checks)
        title = f"{s.claim} {s.verdict}: {len(checks)} checks, {n_fail} failed — {s.statement}"
        parts.append(f"<details><summary>{html.escape(title)}</summary>"
                     f"{_table(checks_table(checks), 'checks', row_class='verdict')}</details>")  # fmt: skip
    return "\n".join(parts)


def platform_table(ok: pd.DataFrame) -> pd.DataFrame:
    """The platforms in the rows (not the presets): numbers at each compute precision swept, from the rows."""
    recs = []
    for (p, prec), g in ok.groupby(["platform", "precision"], sort=True, dropna=False):
        r, preset = g.iloc[0], PLATFORM_PRESETS.get(p)
        bw = float(r["dram_bytes_per_s"]) / float(r["bw_scale"])  # the unscaled bandwidth
        recs.append({"platform": p, "precision": prec, "peak TFLOP/s": float(r["peak_flop_per_s"]) / 1e12,
                     "DRAM GB/s": bw / 1e9, "ridge FLOP/B": float(r["peak_flop_per_s"]) / bw,
                     "clock GHz": float(r["clock_ghz"]), "SRAM MB": preset.total_sram_bytes / 1e6 if preset else None,
                     "pJ/MAC": preset.mac_pj if preset else None, "DRAM pJ/bit": preset.dram_pj_per_bit if preset else
                     None, "bandwidth scales": ", ".join(f"{b:g}" for b in sorted(g["bw_scale"].unique())),
                     "engines": ", ".join(sorted(g["engine"].unique())), "points": len(g)})  # fmt: skip
    return pd.DataFrame(recs)


def model_table(ok: pd.DataFrame) -> pd.DataFrame:
    """The models in the rows with their dimensions (where the preset or config still resolves)."""
    recs = []
    for name, g in ok.groupby("model", sort=True):
        try:
            spec = resolve_name_or_path(name).model_dump()
        except SpecError:  # a config.json that has moved since the sweep
            spec = {}
        schemes = ", ".join(ordered(g["scheme"].unique(), registry.NAMES))
        recs.append({"model": name, **{k: v for k, v in spec.items() if k != "name"}, "schemes": schemes,
                     "points": len(g)})  # fmt: skip
    return pd.DataFrame(recs)


def current_figures(figures_dir: Path | None, ok: pd.DataFrame) -> list[Path]:
    """The PNGs of `figures_dir` drawn from exactly these ok rows (its stamp says so); [] where the folder holds no
    figures. Figures drawn from other rows (another store, rows added since), or without a stamp, are refused:
    a report never shows a figure that its rows did not give."""
    folder = Path(figures_dir) if figures_dir else None
    if folder is None or not folder.is_dir():
        return []
    stamp, again = read_stamp(folder), "run `stream-mla figures` with the same --db and -o first"
    if stamp is None:
        if any(folder.glob("F*.png")):
            raise SpecError(f"--figures: {short_path(folder)} holds figures without a {STAMP} record of the rows "
                            f"they show ({again})")  # fmt: skip
        return []
    if stamp.get("rows") != rows_digest(ok):
        raise SpecError(f"--figures: the figures in {short_path(folder)} were drawn from other rows than this "
                        f"store's ({again})")  # fmt: skip
    pngs = [folder / name for name in stamp["files"] if str(name).endswith(".png")]
    missing = [p.name for p in pngs if not p.is_file()]
    if missing:
        raise SpecError(f"--figures: {short_path(folder)} lacks {missing[0]}, which its {STAMP} lists ({again})")
    return sorted(pngs)


def _figures_html(figures_dir: Path | None, ok: pd.DataFrame) -> str:
    pngs = current_figures(figures_dir, ok)
    if not pngs:
        return f"<p>No figures found in {html.escape(str(figures_dir))} (run <code>stream-mla figures</code>).</p>"
    parts = []
    for png in pngs:
        fid = png.stem.split("_")[0]
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        title = html.escape(f"{fid}: {FIGURE_TITLES.get(fid, png.stem)}")
        parts.append(f'<figure><figcaption><b>{title}</b> ({html.escape(png.name)}; data in '
                     f'{html.escape(png.with_suffix(".csv").name)})</figcaption>'
                     f'<img alt="{title}" src="data:image/png;base64,{data}"></figure>')  # fmt: skip
    return "\n".join(parts)


def _points_html(df: pd.DataFrame) -> str:
    status = df["status"] if "status" in df.columns else pd.Series("ok", index=df.index)
    counts = (df.assign(status=status).groupby(["engine", "status"]).size().unstack(fill_value=0).reset_index()
              if len(df) else pd.DataFrame({"engine": [], "ok": []}))  # fmt: skip
    failed = df[status != "ok"]
    cols = [c for c in ("model", "scheme", "phase", "batch", "context", "platform", "bw_scale", "engine", "error")
            if c in failed.columns]  # fmt: skip
    fail_html = (_table(failed[cols].sort_values(cols[:-1]).reset_index(drop=True)) if len(failed)
                 else "<p>No failed points.</p>")  # fmt: skip
    return f"{_table(counts)}<h3>Failed points ({len(failed)})</h3>{fail_html}"


# ---------------------------------------------------------------------------------------------- page
def _ok(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    return ok.drop_duplicates("key").reset_index(drop=True) if "key" in ok.columns else ok


def _kilo(L: int) -> str:
    return f"{L // 1024}k" if L % 1024 == 0 else f"{L:,}"


def _versus(margin: str, runner_up: str) -> str:
    if not runner_up:
        return "alone"
    return f"ties with {runner_up}" if margin == "1.00x" else f"{margin} faster than {runner_up}"


def recommendation_grid(t: pd.DataFrame) -> pd.DataFrame:
    """The recommendation table one row per (platform, model, batch[, precision]) and one column per context: the
    recommended scheme, its bound and its margin over the runner-up, so the answer fits the first screen."""
    keys = [c for c in ("platform", "model", "B", "precision") if c in t.columns]
    cells = t.assign(
        cell=[f"{r['recommended']} ({r['reason'].split(':')[0].removesuffix('-bound')}; "
              + _versus(r["margin"], r["runner-up"]) + ")" for _, r in t.iterrows()],
        column=[f"L = {_kilo(int(L))}" for L in t["L"]],
    )  # fmt: skip
    grid = cells.pivot_table(index=keys, columns="column", values="cell", aggfunc="first", sort=False)
    columns = [f"L = {_kilo(int(L))}" for L in sorted(t["L"].unique())]
    return grid.reindex(columns=columns).reset_index().rename_axis(columns=None)


def _recommendations_html(ok: pd.DataFrame) -> str:
    t = recommendation_table(ok) if len(ok) else pd.DataFrame()
    if t.empty:
        return "<p>No stored analytic decode rows at L = 1k, 4k or 32k.</p>"
    return (f"{_table(recommendation_grid(t), 'recommend')}<details><summary>Why: the reason for each "
            f"recommendation ({len(t)} points)</summary>{_table(t, 'recommend')}</details>")  # fmt: skip


def render_report(df: pd.DataFrame, figures_dir: str | Path | None) -> str:
    """The report's HTML for a result table (all rows; failed rows are listed, ok rows feed the rest)."""
    ok = _ok(df)
    figures = _figures_html(Path(figures_dir) if figures_dir else None, ok)  # first: stale figures are refused
    results = evaluate_claims(ok)
    ver = pd.DataFrame(list(versions().items()), columns=["package", "version"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>stream-mla report</title><style>{CSS}</style></head>
<body>
<h1>stream-mla: attention schemes on accelerator platforms</h1>
<p>Claims of Geens &amp; Verhelst (arXiv 2506.02523) as specified in attention-schemes.md §8, tested on {len(ok)}
stored points. Analytic rows are the roofline of §2 with first-order energy (MAC + DRAM); engine rows come from
Stream / ZigZag. MHA baseline: d_h = 128 (§3).</p>
<h2>Answers</h2>
{answers_html(results)}
<h2>What the serial model predicts, and what the engines measured</h2>
{execution_html(results, ok)}
<h2>Recommended decode scheme (stored analytic rows, smallest batch)</h2>
{_recommendations_html(ok)}
<h2>Figures</h2>
{figures}
<h2>Evidence</h2>
{evidence_html(results)}
<details><summary>Points per engine and status</summary>{_points_html(df)}</details>
<h2>Platforms swept</h2>
{_table(platform_table(ok))}
<h2>Models swept</h2>
{_table(model_table(ok))}
<h2>Versions</h2>
{_table(ver)}
</body></html>
"""


def write_report(df: pd.DataFrame, figures_dir: str | Path | None, out_html: str | Path) -> Path:
    """Write the report (see render_report) to out_html."""
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(render_report(df, figures_dir), encoding="utf-8")
    return out_html
