"""Registry: deployment variants (int8) register with lineage to their run; a refused gate blocks promotion."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from forgetless import artifacts
from forgetless.cli import app
from forgetless.deploy.quantize import quant_info_path, quantize_and_gate
from forgetless.errors import ForgetlessError, InputError
from forgetless.registry import Registry
from forgetless.registry.sample_run import make_run_folder


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(artifacts.CACHE_ENV, str(tmp_path / "cache"))


def test_int8_variant_registers_and_gate_decides_promotion(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run")
    reg = Registry(tmp_path / "r.sqlite")
    with pytest.raises(InputError, match="no int8 gate verdict"):
        reg.register(run, "m", variant="int8")

    assert quantize_and_gate(run).passed
    plain, _ = reg.register(run, "m")
    v, created = reg.register(run, "m", variant="int8")
    assert created and v.kind == "int8" and v.source == str(run.resolve()) and v.gate_pass
    assert v.artifact == str(quant_info_path(run.resolve())) and v.adapter_sha256 == plain.adapter_sha256
    assert "int8/general/kl" in v.scores and v.scores["general/kl"] == plain.scores["general/kl"]
    assert reg.register(run, "m", variant="int8") == (v, False)  # same artifact: no duplicate
    assert reg.promote(v.ref, "prod").ref == v.ref

    # A budget no quantized model meets (KL to base 0): the gate refuses; registered (on record), never promotable.
    cfg_path = run / artifacts.RESOLVED_CONFIG
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["budget"] = {**(cfg.get("budget") or {}), "general_kl": 0.0}
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert not quantize_and_gate(run).passed
    bad, created = reg.register(run, "m", variant="int8")
    assert created and not bad.gate_pass and any("int8 gate: general" in r for r in bad.reasons)
    with pytest.raises(ForgetlessError, match="int8 quality gate failed"):
        reg.promote(bad.ref, "prod")
    r = CliRunner().invoke(app, ["registry", "promote", bad.ref, "--db", str(tmp_path / "r.sqlite")])
    assert r.exit_code != 0 and "quality gate failed" in str(r.exception)
    assert reg.get("prod").ref == v.ref

    # The older passing verdict was overwritten on disk: promoting v again is refused too.
    with pytest.raises(ForgetlessError, match="gone or changed"):
        reg.promote(v.ref, "staging")


def test_unknown_variant_rejected(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run")
    with pytest.raises(InputError, match="unknown variant 'fp8'"):
        Registry(tmp_path / "r.sqlite").register(run, "m", variant="fp8")
