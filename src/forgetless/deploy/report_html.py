"""One self-contained HTML page per run: curves, tables, budget verdict, router calibration, bench, int8 gate.

Every image is a PNG embedded as a ``data:`` URI and there is no script, stylesheet or font from
outside, so the file opens offline, from an e-mail attachment or a CI artifact, exactly as written.
Each section appears only when the run folder has the file it is drawn from.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from .. import artifacts
from ..io import atomic_write_text
from ..budget import lower_is_better
from ..registry.lineage import judge_suites
from ..runfolder import read_run_folder

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.pass{color:#0a7d24;font-weight:600}.fail{color:#b00020;font-weight:600}.muted{color:#777}
img{max-width:100%;border:1px solid #eee}code{font-size:.8rem;word-break:break-all}
.sel{background:#fffbe6}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return _e(v)
    if isinstance(v, int):
        return str(v)
    return "nan" if math.isnan(v) else f"{v:.4g}"


def _verdict(ok: bool) -> str:
    return '<span class="pass">pass</span>' if ok else '<span class="fail">fail</span>'


def _png_data_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<p><img src="{uri}" alt="{_e(alt)}"></p>'


def _table(header: list[str], rows: list[list[str]], row_class: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = ""
    for i, r in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        body += f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _curves(history: list[dict[str, Any]], budget: float | None, selected: int | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    dom_keys = [k for k in ("domain/mc_acc", "domain/qa_f1", "domain/qa_recall", "domain/qa_em") if any(k in h for h in history)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k in dom_keys:
        ax1.plot(steps, [h.get(k, float("nan")) for h in history], marker="o", label=k.split("/", 1)[1])
    ax1.set_title("domain (higher is better)")
    ax1.set_xlabel("step")
    if dom_keys:
        ax1.legend(fontsize=8)
    ax2.plot(steps, [h.get("general/kl", float("nan")) for h in history], marker="o", color="tab:red", label="general KL to base")
    if budget is not None:
        ax2.axhline(budget, color="gray", linestyle="--", label=f"budget {budget:g}")
    ax2.set_title("general drift (nats/token)")
    ax2.set_xlabel("step")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        if selected is not None:
            ax.axvline(selected, color="goldenrod", alpha=0.6)
        ax.grid(alpha=0.3)
    return _img(_png_data_uri(fig), "domain and general curves")


def _router_chart(info: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dq, gq = info.get("domain_score_quantiles"), info.get("general_score_quantiles")
    if not (isinstance(dq, dict) and isinstance(gq, dict)):
        return ""
    fig, ax = plt.subplots(figsize=(6, 2.4))
    for y, (name, q) in enumerate((("domain prompts", dq), ("general prompts", gq))):
        qs = sorted((float(k), float(v)) for k, v in q.items())
        ax.plot([v for _, v in qs], [y] * len(qs), marker="|", markersize=18, linewidth=6, alpha=0.7, label=name)
    if isinstance(info.get("threshold"), (int, float)):
        ax.axvline(info["threshold"], color="black", linestyle="--", label="threshold")
    ax.set_yticks([0, 1], ["domain", "general"])
    ax.set_xlabel("router score (quantiles 5% / 50% / 95%; above the threshold goes to the base)")
    ax.legend(fontsize=7, loc="upper left")
    return _img(_png_data_uri(fig), "router calibration")


def _bench_section(bench: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, measured = [], []
    for r in bench.get("results", []):
        if "skipped" in r:
            rows.append([_e(r["variant"]), "-", "-", "-", "-", "-", f'<span class="muted">skipped: {_e(r["skipped"])}</span>'])
            continue
        measured.append(r)
        mem = _num(r.get("peak_rss_mb")) + (f" (GPU {_num(r['gpu_peak_mb'])})" if "gpu_peak_mb" in r else "")
        for row in r["rows"]:
            rows.append([_e(r["variant"]), str(row["concurrency"]), _num(row["ttft_ms"]), _num(row["tpot_ms"]), _num(row["tokens_per_s"]), mem, _num(r.get("load_s"))])
    s = bench.get("settings", {})
    out = f"<p class=muted>device {_e(s.get('device'))}, {_e(s.get('max_new_tokens'))} new tokens per request, median of {_e(s.get('repeats'))} runs, torch {_e(s.get('torch'))}</p>"
    out += _table(["variant", "concurrency", "TTFT ms", "ms/token", "tokens/s", "peak RSS MB", "load s"], rows)
    if measured:
        fig, ax = plt.subplots(figsize=(6, 3))
        for r in measured:
            ax.plot([x["concurrency"] for x in r["rows"]], [x["tokens_per_s"] for x in r["rows"]], marker="o", label=r["variant"])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("tokens/s")
        ax.set_title("throughput")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out += _img(_png_data_uri(fig), "throughput by variant")
    return out


def render_report(run_dir: str | Path) -> str:
    """The HTML text of a run's report (see the module docstring for what it holds)."""
    run = read_run_folder(run_dir)
    run_dir = run.path
    summary = run.read_json(artifacts.SUMMARY) or {}
    history = run.metrics()
    budget = run.config.budget.general_kl
    sel = summary.get("selected") if isinstance(summary.get("selected"), dict) else None
    step = sel.get("step") if sel else None
    parts = [f"<h1>forgetless run: {_e(run_dir.resolve().name)}</h1>"]

    # Budget verdict: the same rule the registry applies to promotion.
    parts.append("<h2>Verdict</h2>")
    parts.append(f"<p>{_e(summary.get('verdict', 'no summary.json: the run did not finish'))}</p>")
    if step is not None and history and history[0]["step"] == 0:
        num = lambda h: {k: float(v) for k, v in h.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}  # noqa: E731
        v = judge_suites(num(run.selected()[2]), num(history[0]), run.config.budget)
        general = '<span class="muted">no budget set</span>' if v.budget.state == "unset" else _verdict(v.general_pass)
        parts.append(
            _table(["suite", "verdict"], [["domain (primary metric beats the base)", _verdict(v.domain_pass)], [f"general ({_e(v.budget.describe())})", general]])
        )
        if v.reasons:
            parts.append("<ul>" + "".join(f"<li>{_e(w)}</li>" for w in v.reasons) + "</ul>")
    else:
        parts.append('<p class="fail">no checkpoint selected: the base model is kept</p>')

    parts.append("<h2>Curves</h2>")
    parts.append(_curves(history, budget, step))
    if (run_dir / artifacts.CURVES_PNG).exists():
        parts.append("<p class=muted>The training run's own plot:</p>" + _img(_file_data_uri(run_dir / artifacts.CURVES_PNG), "training curves"))

    parts.append("<h2>Both suites at every evaluation</h2>")
    cols = [k for k in ("general/kl", "general/nll") if any(k in h for h in history)]
    cols += sorted({k for h in history for k in h if k.startswith("domain/") and k.count("/") == 1})
    rows = []
    for h in history:
        rows.append([str(h["step"]) + (" (base)" if h["step"] == 0 else "")] + [_num(h.get(k, "-")) for k in cols])
    header = ["step"] + [c + (" ↓" if lower_is_better(c) else "") for c in cols]
    parts.append(_table(header, rows, ["sel" if h["step"] == step else "" for h in history]))

    info = run.read_json(artifacts.ROUTER_INFO)
    if info is not None:
        parts.append("<h2>Router calibration</h2>")
        flat = [[_e(k), _num(v)] for k, v in info.items() if not isinstance(v, (dict, list))]
        parts.append(_table(["field", "value"], flat))
        parts.append(_router_chart(info))

    bench = run.read_json(f"{artifacts.DEPLOY_DIR}/{artifacts.BENCH_JSON}")
    if bench is not None:
        parts.append("<h2>Serving benchmark</h2>")
        parts.append(_bench_section(bench))

    q = run.read_json(f"{artifacts.DEPLOY_DIR}/{artifacts.QUANT_DIR}/{artifacts.QUANT_INFO}")
    if q is not None:
        g = q.get("general", {})
        parts.append(f"<h2>int8 quality gate: {_verdict(q.get('verdict') == 'pass')}</h2>")
        qrows = [["general/kl (to base)", _num(g.get("kl_fp32")), _num(g.get("kl_int8")), _num(g.get("kl_increase"))]]
        for k, v in (q.get("domain", {}).get("fp32") or {}).items():
            w = (q["domain"].get("int8") or {}).get(k)
            qrows.append([_e(k), _num(v), _num(w), _num(w - v) if isinstance(w, (int, float)) else "-"])
        parts.append(_table(["metric", "fp32", f"int8 ({_e(q.get('backend'))})", "change"], qrows))
        if q.get("reasons"):
            parts.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in q["reasons"]) + "</ul>")

    info = run.read_json(artifacts.RUN_INFO)
    if info is not None:
        hashes = info.get("hashes", {})
        lrows = [["code version", f"<code>{_e(info.get('code_version', '-'))}</code>"]]
        for k, v in hashes.items():
            lrows.append([_e(k), f"<code>{_e(json.dumps(v) if isinstance(v, dict) else v)}</code>"])
        parts.append("<h2>Lineage</h2>" + _table(["what", "hash"], lrows))

    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>forgetless: {_e(run_dir.resolve().name)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render the report and write it atomically (default ``<run>/report.html``); returns its path."""
    path = Path(out) if out is not None else Path(run_dir) / artifacts.REPORT_HTML
    atomic_write_text(path, render_report(run_dir))
    return path
