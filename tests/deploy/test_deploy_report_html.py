"""The HTML run report: content, offline-ness, and images that really load in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from forgetless import artifacts
from forgetless.deploy.report_html import render_report, write_report
from forgetless.io import atomic_write_json
from forgetless.registry.sample_run import make_run_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = make_run_folder(tmp_path_factory.mktemp("report") / "run")
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(run / artifacts.CURVES_PNG)
    plt.close(fig)
    atomic_write_json(
        run / artifacts.ROUTER_INFO,
        {"method": "mahalanobis", "threshold": 12.5, "calibration_auroc": 0.97, "domain_to_base": 0.05,
         "domain_score_quantiles": {"0.05": 3.0, "0.5": 6.0, "0.95": 12.0},
         "general_score_quantiles": {"0.05": 14.0, "0.5": 30.0, "0.95": 55.0}},
    )  # fmt: skip
    bench = {
        "target": str(run), "settings": {"device": "cpu", "max_new_tokens": 32, "repeats": 3, "torch": "2.13"},
        "results": [
            {"variant": "merged", "load_s": 0.5, "peak_rss_mb": 900.0, "rows": [
                {"concurrency": 1, "ttft_ms": 40.0, "tpot_ms": 20.0, "tokens_per_s": 48.0},
                {"concurrency": 4, "ttft_ms": 90.0, "tpot_ms": 25.0, "tokens_per_s": 150.0}]},
            {"variant": "nf4", "skipped": "4-bit NF4 (bitsandbytes) needs a CUDA GPU; none is present"},
        ],
    }  # fmt: skip
    atomic_write_json(run / artifacts.DEPLOY_DIR / artifacts.BENCH_JSON, bench)
    atomic_write_json(
        run / artifacts.DEPLOY_DIR / artifacts.QUANT_DIR / artifacts.QUANT_INFO,
        {"verdict": "refused", "backend": "torch", "reasons": ["general: KL to base rose by 0.0300 nats/token (limit 0.01)"],
         "general": {"kl_fp32": 0.02, "kl_int8": 0.05, "kl_increase": 0.03}, "domain": {"fp32": {"domain/mc_acc": 0.4}, "int8": {"domain/mc_acc": 0.38}}},
    )  # fmt: skip
    return run


def test_report_content(run: Path) -> None:
    page = render_report(run)
    # verdict, curves, both-suites table, router, bench, int8 gate, lineage
    assert page.count("<h2>") == 7
    assert "step 20 is the best checkpoint inside the budget" in page
    assert page.count('class="pass"') >= 2  # both suites pass for the sample run
    assert "0.97" in page and "skipped: 4-bit NF4" in page and "KL to base rose by 0.0300" in page
    # The selected step's row is highlighted, the base row labelled.
    assert '<tr class="sel"><td>20</td>' in page and "<td>0 (base)</td>" in page
    # Offline: nothing is fetched from anywhere; every image is inline.
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'<img src="([^"]+)"', page))


def test_report_without_optional_files_and_failing_budget(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run", general_kl=0.3, budget=0.05)
    page = render_report(run)
    assert "Router calibration" not in page and "Serving benchmark" not in page
    assert "general: general KL 0.3000 &gt; 0.05" in page and 'class="fail"' in page
    path = write_report(run)
    assert path == run / artifacts.REPORT_HTML and path.read_text(encoding="utf-8") == page


_CHECK = (
    "<script>window.addEventListener('load',()=>{const r=[...document.images].map(i=>[i.alt,i.complete,i.naturalWidth,i.naturalHeight]);"
    "const p=document.createElement('pre');p.id='imgcheck';p.textContent=JSON.stringify(r);document.body.appendChild(p);});</script>"
)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_images_load_in_headless_chromium(run: Path, tmp_path: Path) -> None:
    # Render a copy with a probe script appended: after 'load' it records each image's decoded size.
    page = render_report(run).replace("</body>", _CHECK + "</body>")
    probe = tmp_path / "probe.html"
    probe.write_text(page, encoding="utf-8")
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    m = re.search(r'<pre id="imgcheck">(.*?)</pre>', proc.stdout)
    assert m, f"no probe output; chromium stderr tail: {proc.stderr[-800:]}"
    images = json.loads(m.group(1).replace("&quot;", '"'))
    assert [alt for alt, *_ in images] == ["domain and general curves", "training curves", "router calibration", "throughput by variant"]
    for alt, complete, w, h in images:
        assert complete and w > 0 and h > 0, f"image {alt!r} did not load"
