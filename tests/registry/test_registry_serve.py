"""Promote and rollback switch what `forgetless serve registry:ALIAS` serves, without a restart."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forgetless import artifacts
from forgetless.errors import ForgetlessError
from forgetless.registry import Registry, resolve_alias
from forgetless.registry.sample_run import make_run_folder

serve_deployment = pytest.importorskip("forgetless.serve.deployment")
serve_metrics = pytest.importorskip("forgetless.serve.metrics")


def _served_lora_b(dep) -> torch.Tensor:  # noqa: ANN001 - the serve stage's Deployment
    name = dep.engine.adapter_name
    for n, p in dep.engine.model.named_parameters():
        if "lora_B" in n and n.endswith(f"{name}.weight") and "layers.0.self_attn.q_proj" in n:
            return p.detach().clone()
    raise AssertionError("no lora_B of layer 0 q_proj in the served model")


def _file_lora_b(run: Path) -> torch.Tensor:
    t = load_file(str(run / artifacts.ADAPTER_DIR / "adapter_model.safetensors"))
    return next(v for k, v in t.items() if "lora_B" in k and "layers.0.self_attn.q_proj" in k)


def test_promote_and_rollback_hot_swap_the_served_model(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    r1 = make_run_folder(tmp_path / "r1", lora_seed=1)
    r2 = make_run_folder(tmp_path / "r2", lora_seed=2)
    reg = Registry(db)
    v1, _ = reg.register(r1, "pharma")
    v2, _ = reg.register(r2, "pharma")
    reg.promote(v1.ref, "prod")
    dep = serve_deployment.Deployment(
        lambda: resolve_alias("prod", db), serve_metrics.ServeMetrics(), serve_deployment.EngineSettings(reload_interval_s=0.01)
    )
    try:
        assert dep.spec.run_dir == r1.resolve()
        assert torch.equal(_served_lora_b(dep), _file_lora_b(r1))
        reg.promote(v2.ref, "prod")
        assert dep.refresh(force=True)
        assert dep.spec.run_dir == r2.resolve()
        assert torch.equal(_served_lora_b(dep), _file_lora_b(r2))
        reg.rollback("prod")
        assert dep.refresh(force=True)
        assert dep.spec.run_dir == r1.resolve()
        assert torch.equal(_served_lora_b(dep), _file_lora_b(r1))
        assert not dep.refresh(force=True)  # nothing changed since: no swap
    finally:
        dep.close()


def test_serving_an_alias_refuses_adapter_files_changed_since_registration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from forgetless.serve.cli import target_resolver

    db = tmp_path / "r.sqlite"
    monkeypatch.setenv(artifacts.REGISTRY_ENV, str(db))
    r1 = make_run_folder(tmp_path / "r1", lora_seed=1)
    r2 = make_run_folder(tmp_path / "r2", lora_seed=2)
    reg = Registry(db)
    v1, _ = reg.register(r1, "pharma")
    v2, _ = reg.register(r2, "pharma")
    reg.promote(v1.ref, "prod")
    dep = serve_deployment.Deployment(
        target_resolver("registry:prod"), serve_metrics.ServeMetrics(), serve_deployment.EngineSettings(reload_interval_s=0.01)
    )
    try:
        reg.promote(v2.ref, "prod")
        # After the promote, r2's adapter is replaced by other weights of the same shape (r1's).
        shutil.copyfile(r1 / artifacts.ADAPTER_DIR / "adapter_model.safetensors", r2 / artifacts.ADAPTER_DIR / "adapter_model.safetensors")
        assert not dep.refresh(force=True)
        assert dep.spec.run_dir == r1.resolve()  # the last good version keeps serving
        # A fresh server on the tampered alias refuses to start.
        with pytest.raises(ForgetlessError, match="changed since it was registered"):
            serve_deployment.Deployment(target_resolver("registry:prod"), serve_metrics.ServeMetrics(), serve_deployment.EngineSettings())
    finally:
        dep.close()
