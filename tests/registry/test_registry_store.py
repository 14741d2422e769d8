"""Registry: lineage recorded, promotion gated on both suites, rollback, name validation, concurrency."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forgetless import artifacts
from forgetless.cli import app
from forgetless.errors import ForgetlessError, InputError
from forgetless.hashing import sha256_json
from forgetless.registry import Registry, read_run, resolve_alias, validate_name
from forgetless.budget import PRIMARY_DOMAIN, BudgetConfig
from forgetless.registry.lineage import judge_suites
from forgetless.registry.sample_run import make_run_folder


@pytest.fixture(scope="module")
def _made_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_run_folder(root / "good", lora_seed=1)
    make_run_folder(root / "good2", lora_seed=2)
    make_run_folder(root / "overbudget", general_kl=0.2, budget=0.05, lora_seed=3)
    make_run_folder(root / "nogain", domain_acc=(0.4, 0.35), lora_seed=4)
    return root


@pytest.fixture
def runs(_made_runs: Path, tmp_path: Path) -> dict[str, Path]:
    # Each test gets its own copy (tests tamper with files); the tiny base stays shared, as in
    # real use several runs share one base model folder.
    out = {}
    for name in ("good", "good2", "overbudget", "nogain"):
        shutil.copytree(_made_runs / name, tmp_path / name)
        out[name] = tmp_path / name
    return out


def test_lineage_recorded(runs: dict[str, Path], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    v, created = reg.register(runs["good"], "pharma")
    assert created and v.ref == "pharma:1"
    # Hashes come from run_info.json as written by the run.
    assert (v.base_sha256, v.tokenizer_sha256) == ("b" * 64, "t" * 64)
    assert v.data_sha256 == sha256_json(["d" * 64])  # per-file hashes, path-independent
    assert v.code_version == "0.1.0+test"
    cfg = __import__("yaml").safe_load((runs["good"] / artifacts.RESOLVED_CONFIG).read_text())
    assert v.config_sha256 == sha256_json({k: x for k, x in cfg.items() if k != "run_dir"})
    assert len(v.adapter_sha256) == 64
    assert v.selected_step == 20
    assert v.scores["general/kl"] == pytest.approx(0.02)
    assert v.base_scores["domain/mc_acc"] == pytest.approx(0.20) and v.scores["domain/qa_recall"] == pytest.approx(0.40)
    assert "general/nll" in v.scores and not any(k.startswith("time/") for k in v.scores)
    assert v.budget_general_kl == pytest.approx(0.05)
    assert v.domain_pass and v.general_pass
    # The same run registered again is the same version, not a duplicate.
    again, created = reg.register(runs["good"], "pharma")
    assert not created and again.id == v.id
    # The stored row survives a fresh handle (it is on disk, not in memory).
    assert Registry(tmp_path / "r.sqlite").get("pharma:1").adapter_sha256 == v.adapter_sha256


def test_missing_run_info_hashes_are_computed(runs: dict[str, Path], tmp_path: Path) -> None:
    (runs["good"] / artifacts.RUN_INFO).unlink()
    rec = read_run(runs["good"])
    assert len(rec.base_sha256) == 64 and rec.base_sha256 != "b" * 64
    assert len(rec.tokenizer_sha256) == 64
    assert rec.data_sha256 == sha256_json([])  # the config names no data files


def test_judge_suites_hand_worked() -> None:
    first, second = PRIMARY_DOMAIN[0], PRIMARY_DOMAIN[1]
    base = {first: 0.2, second: 0.5, "domain/ppl": 20.0}
    budget = BudgetConfig(general_kl=0.05)
    v = judge_suites({first: 0.3, second: 0.1, "general/kl": 0.04}, base, budget)
    assert (v.domain_pass, v.general_pass, v.budget.state) == (True, True, "inside")
    # The first primary metric decides: the second rising does not rescue a flat first; KL over budget fails.
    v = judge_suites({first: 0.2, second: 0.9, "general/kl": 0.06}, base, budget)
    assert (v.domain_pass, v.general_pass) == (False, False)
    assert any(first in r for r in v.reasons) and "general: general KL 0.0600 > 0.05" in v.reasons
    # Without accuracies, perplexity decides, and lower is better. No budget: not a pass, its own state.
    v = judge_suites({"domain/ppl": 19.0}, {"domain/ppl": 20.0}, BudgetConfig())
    assert (v.domain_pass, v.general_pass, v.budget.state) == (True, False, "unset")
    assert judge_suites({"domain/ppl": 21.0}, {"domain/ppl": 20.0}, BudgetConfig()).domain_pass is False
    # A budget with no KL measured fails the general suite.
    assert judge_suites({first: 0.3}, base, budget).general_pass is False


def test_run_without_budget_needs_explicit_promotion(tmp_path: Path) -> None:
    """A run that set no budget registers as "no budget" (never a general pass at any drift) and is
    promoted only when the user says so."""
    run = make_run_folder(tmp_path / "nobudget", general_kl=1.136, budget=None)
    reg = Registry(tmp_path / "r.sqlite")
    v, _ = reg.register(run, "pharma")
    assert (v.budget_state, v.general_pass, v.domain_pass) == ("unset", False, True)
    with pytest.raises(ForgetlessError, match="--allow-no-budget"):
        reg.promote(v.ref, "prod")
    assert reg.promote(v.ref, "prod", allow_no_budget=True).id == v.id


def test_registry_judges_the_exported_scale(tmp_path: Path) -> None:
    """The adapter on disk is the checkpoint at its selected scale: its metrics, not the checkpoint's
    own line at scale 1, are what the registry judges."""
    run = make_run_folder(tmp_path / "scaled", general_kl=0.2, budget=0.05)
    p = run / artifacts.SUMMARY
    summary = json.loads(p.read_text())
    summary["selected"] = {"step": 20, "scale": 0.5, "metric": "domain/qa_recall", "score": 0.3}
    p.write_text(json.dumps(summary))
    (run / artifacts.SCALE_CURVE).write_text(json.dumps([{"step": 20, "scale": 0.5, "general/kl": 0.03, "domain/qa_recall": 0.3, "domain/mc_acc": 0.3}]))
    rec = read_run(run)
    assert rec.scores["general/kl"] == 0.03 and rec.budget_state == "inside" and rec.general_pass


def test_run_that_kept_the_base_is_not_registrable(runs: dict[str, Path], tmp_path: Path) -> None:
    p = runs["good"] / artifacts.SUMMARY
    summary = json.loads(p.read_text())
    summary["selected"] = None
    p.write_text(json.dumps(summary))
    with pytest.raises(InputError, match="selected no checkpoint"):
        read_run(runs["good"])


def test_promote_refused_when_a_suite_fails(runs: dict[str, Path], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    over, _ = reg.register(runs["overbudget"], "pharma")
    nogain, _ = reg.register(runs["nogain"], "pharma")
    assert over.domain_pass and not over.general_pass
    assert not nogain.domain_pass and nogain.general_pass
    with pytest.raises(ForgetlessError, match="general suite failed"):
        reg.promote(over.ref, "prod")
    with pytest.raises(ForgetlessError, match="domain suite failed"):
        reg.promote(nogain.ref, "prod")
    assert reg.aliases() == {}


def test_promote_refused_when_adapter_changed(runs: dict[str, Path], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    v, _ = reg.register(runs["good"], "pharma")
    (runs["good"] / artifacts.ADAPTER_DIR / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(ForgetlessError, match="changed since it was registered"):
        reg.promote(v.ref, "prod")


def test_rollback_switches_resolved_model(runs: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    reg = Registry(db)
    v1, _ = reg.register(runs["good"], "pharma")
    v2, _ = reg.register(runs["good2"], "pharma")
    assert v2.ref == "pharma:2"
    reg.promote(v1.ref, "prod")
    assert resolve_alias("prod", db) == runs["good"].resolve()
    reg.promote(v2.ref, "prod")
    assert resolve_alias("prod", db) == runs["good2"].resolve()
    assert reg.get("prod").ref == "pharma:2"
    back = reg.rollback("prod")
    assert back.ref == "pharma:1"
    assert resolve_alias("prod", db) == runs["good"].resolve()
    with pytest.raises(ForgetlessError, match="no earlier version"):
        reg.rollback("prod")
    assert [e["action"] for e in reg.history("prod")] == ["promote", "promote", "rollback"]
    with pytest.raises(ForgetlessError, match="not set"):
        resolve_alias("staging", db)


@pytest.mark.parametrize("bad", ["../prod", "a/b", "..", "", ".hidden", "x" * 65, "pharma..x", "na me", "demo\n", "demo\r\n"])
def test_bad_names_rejected(bad: str, runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="invalid"):
        validate_name(bad)
    reg = Registry(tmp_path / "r.sqlite")
    with pytest.raises(InputError):
        reg.register(runs["good"], bad)
    with pytest.raises(InputError):
        resolve_alias(bad, tmp_path / "r.sqlite")
    assert reg.versions() == []


def test_alias_and_model_names_never_collide(runs: dict[str, Path], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    demo, _ = reg.register(runs["good"], "demo")
    other, _ = reg.register(runs["good2"], "other")
    # An alias named like a model would make `promote demo` / `get("demo")` mean the alias' target.
    with pytest.raises(InputError, match="a model of that name is registered"):
        reg.promote(other.ref, "demo")
    assert reg.aliases() == {} and reg.get("demo").ref == demo.ref
    reg.promote(other.ref, "prod")
    with pytest.raises(InputError, match="already an alias"):
        reg.register(runs["good"], "prod")
    assert [v.name for v in reg.versions()] == ["demo", "other"]


def test_resolve_pinned_gives_the_registered_adapter_hash(runs: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    reg = Registry(db)
    v, _ = reg.register(runs["good"], "pharma")
    reg.promote(v.ref, "prod")
    assert reg.resolve_pinned("prod") == (runs["good"].resolve(), v.adapter_sha256)


def test_diff(runs: dict[str, Path], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.register(runs["good"], "pharma")
    reg.register(runs["overbudget"], "pharma")
    d = reg.diff("pharma:1", "pharma:2")
    assert set(d["lineage"]) == {"adapter_sha256"}  # same base, data, tokenizer, code and config
    assert d["scores"]["general/kl"]["delta"] == pytest.approx(0.2 - 0.02)
    assert d["verdict"] == {"general": (True, False)}


def test_bad_metrics_line_names_file_and_line(runs: dict[str, Path], tmp_path: Path) -> None:
    p = runs["good"] / artifacts.METRICS
    p.write_text(p.read_text() + "{not json\n")
    with pytest.raises(InputError, match=r"metrics.jsonl:4"):
        Registry(tmp_path / "r.sqlite").register(runs["good"], "pharma")


_WORKER = """
import sys
from forgetless.registry import Registry
from forgetless.registry.lineage import read_run
rec = read_run(sys.argv[2])
for i in range(int(sys.argv[3])):
    rec.adapter_sha256 = f"{sys.argv[4]}-{i}"  # distinct content, so each call mints a version
    Registry(sys.argv[1]).register(rec.run_dir, "pharma", record=rec)
"""


def test_concurrent_registration_hands_out_each_version_once(runs: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    Registry(db)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(db), str(runs["good"]), "15", f"w{k}"]) for k in range(3)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    versions = [v.version for v in Registry(db).versions("pharma")]
    assert sorted(versions) == list(range(1, 46))


def test_cli_round_trip(runs: dict[str, Path], tmp_path: Path) -> None:
    db = str(tmp_path / "r.sqlite")
    cli = CliRunner()
    r = cli.invoke(app, ["registry", "register", str(runs["good"]), "--name", "pharma", "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ref"] == "pharma:1"
    r = cli.invoke(app, ["registry", "register", str(runs["overbudget"]), "--name", "pharma", "--db", db])
    assert r.exit_code == 0 and "pharma:2" in r.output
    r = cli.invoke(app, ["registry", "promote", "pharma:2", "--alias", "prod", "--db", db])
    assert r.exit_code != 0 and isinstance(r.exception, ForgetlessError)
    r = cli.invoke(app, ["registry", "promote", "pharma:1", "--alias", "prod", "--db", db])
    assert r.exit_code == 0 and "prod" in r.output
    r = cli.invoke(app, ["registry", "list", "--db", db, "--json"])
    listed = json.loads(r.output)
    assert [(x["ref"], x["aliases"]) for x in listed] == [("pharma:1", ["prod"]), ("pharma:2", [])]
    r = cli.invoke(app, ["registry", "show", "prod", "--db", db])
    assert r.exit_code == 0 and "pharma:1" in r.output
    r = cli.invoke(app, ["registry", "diff", "pharma:1", "pharma:2", "--db", db])
    assert r.exit_code == 0 and "general/kl" in r.output
    r = cli.invoke(app, ["registry", "register", str(runs["good"]), "--name", "../x", "--db", db])
    assert r.exit_code != 0 and isinstance(r.exception, InputError)
