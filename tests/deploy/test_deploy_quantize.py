"""int8 quantization and its quality gate, on a tiny run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forgetless import artifacts
from forgetless.deploy.int8_weight_only import Int8WeightOnlyLinear
from forgetless.deploy.quantize import check_int8_gate, judge_variant, quant_info_path, quantize_and_gate
from forgetless.deploy.variants import load_base_4bit, load_variant, nf4_available, quantize_int8, resolve_target
from forgetless.errors import ForgetlessError
from forgetless.budget import PRIMARY_DOMAIN, BudgetConfig
from forgetless.registry.sample_run import make_run_folder
from forgetless.testing import tiny_model


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(artifacts.CACHE_ENV, str(tmp_path / "cache"))


def test_judge_variant_hand_worked() -> None:
    fp32 = {"general/kl": 0.020, "domain/mc_acc": 0.50}
    ok = {"general/kl": 0.025, "domain/mc_acc": 0.49}
    assert judge_variant(fp32, ok, budget=BudgetConfig(general_kl=0.05), max_kl_increase=0.01, max_domain_drop=0.02) == (True, [], "domain/mc_acc")
    # KL up by 0.015 > 0.01, and over the 0.03 budget; accuracy down by 0.05 > 0.02: three reasons.
    bad = {"general/kl": 0.035, "domain/mc_acc": 0.45}
    passed, why, _ = judge_variant(fp32, bad, budget=BudgetConfig(general_kl=0.03), max_kl_increase=0.01, max_domain_drop=0.02)
    assert not passed and len(why) == 3
    # Perplexity only: the drop limit is relative (2% of 10.0 = 0.2); 10.1 passes, 10.3 fails.
    assert judge_variant({"general/kl": 0.0, "domain/ppl": 10.0}, {"general/kl": 0.0, "domain/ppl": 10.1}, budget=BudgetConfig(), max_kl_increase=0.01, max_domain_drop=0.02)[0]
    assert not judge_variant({"general/kl": 0.0, "domain/ppl": 10.0}, {"general/kl": 0.0, "domain/ppl": 10.3}, budget=BudgetConfig(), max_kl_increase=0.01, max_domain_drop=0.02)[0]
    with pytest.raises(ForgetlessError, match="limits must be >= 0"):
        judge_variant(fp32, ok, budget=BudgetConfig(), max_kl_increase=-1.0, max_domain_drop=0.02)


def test_quantize_int8_replaces_linears_and_stays_close() -> None:
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        ref = model(ids).logits
        q = quantize_int8(model, "torch", "per-channel")
        got = q(ids).logits
    kinds = {type(m).__module__ + "." + type(m).__name__ for m in q.modules() if "Linear" in type(m).__name__}
    assert kinds and all("quantized" in k for k in kinds), kinds
    assert q.lm_head is not model.lm_head  # quantize_dynamic copies: the fp32 model is untouched
    assert torch.allclose(got, ref, atol=0.05), (got - ref).abs().max()


def test_weight_only_linear_hand_worked() -> None:
    lin = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.27, -0.64], [0.254, 0.128]]))
    q = Int8WeightOnlyLinear(lin)
    # Row scales: 1.27/127 = 0.01 and 0.254/127 = 0.002; the weights are exact multiples of them.
    assert q.qweight.tolist() == [[127, -64], [127, 64]]
    assert torch.allclose(q.scale, torch.tensor([0.01, 0.002]))
    got = q(torch.tensor([[[1.0, 1.0]]]))
    assert got.shape == (1, 1, 2) and torch.allclose(got, torch.tensor([[[0.63, 0.382]]]), atol=1e-5)


def test_weight_only_is_the_default_and_stays_close() -> None:
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        ref = model(ids).logits
        q = quantize_int8(model)
        got = q(ids).logits
    assert all(type(m) is not torch.nn.Linear for m in q.modules())
    assert any(isinstance(m, Int8WeightOnlyLinear) for m in q.modules())
    assert any(type(m) is torch.nn.Linear for m in model.modules())  # the fp32 model is untouched
    assert torch.allclose(got, ref, atol=0.01), (got - ref).abs().max()


def test_unknown_backend_rejected() -> None:
    with pytest.raises(ForgetlessError, match="unknown int8 backend"):
        quantize_int8(tiny_model(), "magic")


def test_gate_passes_and_records_verdict(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run")
    res = quantize_and_gate(run)
    assert res.passed, res.reasons
    info = json.loads(quant_info_path(run).read_text())
    assert info["verdict"] == "pass" and info["backend"] == "torch"
    assert info["general"]["prompts"] == 8  # the run's eval.general_limit
    assert info["general"]["kl_increase"] == pytest.approx(info["general"]["kl_int8"] - info["general"]["kl_fp32"])
    assert info["domain"]["primary_metric"] == PRIMARY_DOMAIN[0] and info["domain"]["mc_items"] == 2
    assert check_int8_gate(run)["verdict"] == "pass"
    # A changed adapter invalidates the verdict.
    (run / artifacts.ADAPTER_DIR / "adapter_model.safetensors").write_bytes(b"x")
    with pytest.raises(ForgetlessError, match="adapter changed"):
        check_int8_gate(run)


def test_gate_refuses_when_budget_broken(tmp_path: Path) -> None:
    # A large random adapter moves the tuned model far from the base; a tiny budget cannot hold it.
    run = make_run_folder(tmp_path / "run", budget=1e-4, lora_scale=2.0)
    res = quantize_and_gate(run)
    assert not res.passed
    assert any(r.startswith("general: the run's budget: general KL") for r in res.reasons)
    assert json.loads(quant_info_path(run).read_text())["verdict"] == "refused"
    with pytest.raises(ForgetlessError, match="refused by the quality gate"):
        check_int8_gate(run)


def test_quantize_loads_every_model_at_the_run_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run pinned to a revision: the base reference, fp32 and int8 all load that revision (KL
    between two different base models would be meaningless), and remote code stays off."""
    import yaml

    import forgetless.models as models

    run = make_run_folder(tmp_path / "run")
    cfg_path = run / artifacts.RESOLVED_CONFIG
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["model"]["revision"] = "v1"  # a local folder ignores the revision; the spy sees what was asked
    cfg_path.write_text(yaml.safe_dump(cfg))
    calls: list[tuple[str | None, bool]] = []
    real = models.load_model

    def spy(name: str, **kw: object) -> object:
        calls.append((kw.get("revision"), bool(kw.get("trust_remote_code"))))  # type: ignore[arg-type]
        return real(name, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(models, "load_model", spy)
    quantize_and_gate(run)
    assert len(calls) >= 2 and set(calls) == {("v1", False)}


def test_remote_code_run_needs_consent(tmp_path: Path) -> None:
    import yaml

    run = make_run_folder(tmp_path / "run")
    cfg_path = run / artifacts.RESOLVED_CONFIG
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["model"]["trust_remote_code"] = True
    cfg_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ForgetlessError, match="--trust-remote-code"):
        resolve_target(str(run))
    assert resolve_target(str(run), allow_remote_code=True).model.trust_remote_code


def test_never_gated_is_refused(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run")
    with pytest.raises(ForgetlessError, match="never gated"):
        check_int8_gate(run)


def test_variants_differ_as_expected(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run")
    t = resolve_target(str(run))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        out = {v: load_variant(t, v)(ids).logits for v in ("base", "adapter", "merged", "int8")}
    assert not torch.allclose(out["base"], out["adapter"], atol=1e-3)  # the adapter changes the model
    assert torch.allclose(out["adapter"], out["merged"], atol=1e-4)  # merging does not
    assert torch.allclose(out["merged"], out["int8"], atol=0.05)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal path")
def test_nf4_refused_cleanly_without_gpu() -> None:
    assert "CUDA" in (nf4_available() or "")
    with pytest.raises(ForgetlessError, match="CUDA"):
        load_base_4bit("anything")


@pytest.mark.skipif(nf4_available() is not None, reason="4-bit NF4 needs CUDA and bitsandbytes")
def test_nf4_loads_and_generates_on_gpu(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run")
    t = resolve_target(str(run))
    model = load_variant(t, "nf4")
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    ids = torch.tensor([[5, 6, 7, 8]], device="cuda")
    with torch.no_grad():
        got = model(ids).logits.float().cpu()
        ref = load_variant(t, "adapter")(ids.cpu()).logits
    assert torch.isfinite(got).all() and got.shape == ref.shape
    # 4-bit weights on a random 32-wide model: close to fp32, not equal.
    assert (got - ref).abs().mean() < 0.5 * ref.abs().mean()


def test_torchao_backend_stays_close() -> None:
    pytest.importorskip("torchao")
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        ref = model(ids).logits
        got = quantize_int8(model, "torchao")(ids).logits
    assert not torch.equal(got, ref)  # it really quantized
    assert torch.allclose(got, ref, atol=0.05), (got - ref).abs().max()


def test_targets_resolve_from_registry_run_folder_or_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from forgetless.registry import Registry

    run = make_run_folder(tmp_path / "run")
    db = tmp_path / "r.sqlite"
    monkeypatch.setenv(artifacts.REGISTRY_ENV, str(db))
    reg = Registry()
    v, _ = reg.register(run, "pharma")
    reg.promote(v.ref, "staging")
    t = resolve_target("registry:staging")
    assert t.run_dir == run.resolve() and t.variants() == ("base", "adapter", "merged", "int8", "nf4")
    assert t.base_model == str((tmp_path / "tiny-base").resolve())
    bare = resolve_target(str(tmp_path / "tiny-base"))
    assert bare.run_dir is None and bare.variants() == ("base", "int8")
    with pytest.raises(ForgetlessError, match="no 'adapter' variant"):
        load_variant(bare, "adapter")


def test_weight_only_bf16_keeps_the_input_dtype_and_stays_close() -> None:
    # 32 inputs: the hand-worked 2x2 weights of the fp32 test in the first two columns, zeros after.
    lin = torch.nn.Linear(32, 2, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[:, :2] = torch.tensor([[1.27, -0.64], [0.254, 0.128]])
    q = Int8WeightOnlyLinear(lin, torch.bfloat16)
    assert q.act_dtype == torch.bfloat16 and q.scale.dtype == torch.bfloat16
    assert q.qweight[:, :2].tolist() == [[127, -64], [127, 64]]
    x = torch.zeros(1, 1, 32)
    x[..., :2] = 1.0
    got = q(x)
    # Same values as fp32 (0.63, 0.382), to bf16's rounding of the scales (8 bits of mantissa).
    assert got.dtype == torch.float32 and torch.allclose(got, torch.tensor([[[0.63, 0.382]]]), atol=4e-3)
    # A width the bf16 kernel gets wrong keeps fp32 activations (and its exact values).
    narrow = Int8WeightOnlyLinear(torch.nn.Linear(2, 2, bias=False), torch.bfloat16)
    assert narrow.act_dtype == torch.float32
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        ref = model(ids).logits
        out = quantize_int8(model, scheme="weight-only-bf16")(ids).logits
    assert torch.allclose(out, ref, atol=0.05), (out - ref).abs().max()


def test_inplace_quantization_keeps_no_fp32_copy() -> None:
    model = tiny_model()
    q = quantize_int8(model, inplace=True)
    assert q is model  # the same object, its Linear layers replaced: no second fp32 model at the peak
    assert all(type(m) is not torch.nn.Linear for m in model.modules())
