"""forgetless bench on a tiny run folder: the measurements, the subprocess path and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from forgetless import artifacts
from forgetless.cli import app
from forgetless.deploy.bench import BenchSpec, _StepClock, run_worker
from forgetless.errors import ForgetlessError
from forgetless.registry.sample_run import make_run_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_folder(tmp_path_factory.mktemp("bench") / "run")


def test_step_clock_records_one_time_per_token() -> None:
    clock = _StepClock()
    scores = torch.zeros(2, 5)
    assert clock(torch.zeros(2, 3, dtype=torch.long), scores) is scores  # never changes the logits
    clock(torch.zeros(2, 4, dtype=torch.long), scores)
    assert len(clock.times) == 2 and clock.times[0] <= clock.times[1]


def test_worker_measures_every_concurrency(run: Path) -> None:
    res = run_worker(BenchSpec(str(run), "merged", concurrency=[1, 3], max_new_tokens=6, repeats=2))
    assert [r["concurrency"] for r in res["rows"]] == [1, 3]
    for r in res["rows"]:
        assert r["ttft_ms"] > 0 and r["tpot_ms"] > 0 and r["tokens_per_s"] > 0
        # No bound relating the timings to each other: they are means over noisy repeats, and a
        # timing-derived assertion fails under load (speed goals live in bench/, not in tests).
    assert res["peak_rss_mb"] >= res["rss_start_mb"] > 0
    assert res["load_s"] > 0 and res["variant"] == "merged"


def test_cli_bench_writes_json_and_skips_nf4_on_cpu(run: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("nf4 would run on a GPU")
    r = CliRunner().invoke(
        app, ["bench", str(run), "--variants", "int8,nf4", "--concurrency", "1,2", "--max-new-tokens", "4", "--repeats", "1"]
    )
    assert r.exit_code == 0, r.output
    path = run / artifacts.DEPLOY_DIR / artifacts.BENCH_JSON
    res = json.loads(path.read_text())
    by = {x["variant"]: x for x in res["results"]}
    assert "CUDA" in by["nf4"]["skipped"]
    assert by["int8"]["int8_backend"] == "torch"
    assert by["int8"]["int8_scheme"] == "weight-only-bf16"  # bench times the scheme quantize gates
    assert [row["concurrency"] for row in by["int8"]["rows"]] == [1, 2]
    assert all(math.isfinite(row["tokens_per_s"]) for row in by["int8"]["rows"])
    assert "int8" in r.output and "skipped" in r.output


def test_cli_bench_bad_options(run: Path) -> None:
    cli = CliRunner()
    r = cli.invoke(app, ["bench", str(run), "--variants", "fp8"])
    assert r.exit_code != 0 and isinstance(r.exception, ForgetlessError) and "unknown variant" in str(r.exception)
    r = cli.invoke(app, ["bench", str(run), "--concurrency", "1,x"])
    assert isinstance(r.exception, ForgetlessError) and "--concurrency" in str(r.exception)
