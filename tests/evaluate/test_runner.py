"""The evaluator's cached base evaluation, its no-op check, timing summary and precision choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from forgetless.evaluate import precision as prec
from forgetless.evaluate.domain import DomainData
from forgetless.evaluate.drift import build_reference
from forgetless.evaluate.runner import Evaluator, eval_timing, is_noop_adapter
from forgetless.testing import tiny_model, tiny_tokenizer


def _lora(seed: int = 0) -> torch.nn.Module:
    return get_peft_model(tiny_model(seed=seed), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))


def test_noop_adapter_detection() -> None:
    assert is_noop_adapter(tiny_model())  # no adapter at all
    model = _lora()
    assert is_noop_adapter(model)  # PEFT initialises lora_B to zero
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n)[0, 0] = 1e-3
    assert not is_noop_adapter(model)
    dora = get_peft_model(tiny_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], use_dora=True))
    assert not is_noop_adapter(dora)  # DoRA recomputes the weight: not bit-identical


def test_base_evaluation_is_cached_and_equal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path))
    tok, model = tiny_tokenizer(), _lora()
    prompts = [{"id": "a", "category": "knowledge", "prompt": "what is the capital of france"}]
    ref = build_reference(model, tok, prompts, max_new_tokens=4, topk=4)
    domain = DomainData(qa=[{"question": "hello world", "answer": "yes"}], mc=[{"question": "red or green", "choices": ["red", "green"], "answer": 0}])

    def make() -> Evaluator:
        return Evaluator(tok, domain, ref, qa_max_new_tokens=3, base_cache_key="tiny:tok")

    first, cached = make().evaluate_base(model)
    assert not cached and first.metrics["general/kl"] == 0.0
    second, cached = make().evaluate_base(model)
    assert cached and second.metrics["time/eval_cached"] == 1
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}  # noqa: E731
    assert strip(second.metrics) == strip(first.metrics)
    assert second.scores["domain/mc_acc"].n == 1  # per-item scores come back too (the budget needs them)
    # Any setting that changes the numbers changes the key.
    other = Evaluator(tok, domain, ref, qa_max_new_tokens=2, base_cache_key="tiny:tok")
    assert other.evaluate_base(model)[1] is False


def test_eval_timing_by_hand() -> None:
    history = [
        {"step": 0, "time/eval_general_s": 10.0, "time/eval_domain_s": 20.0},
        {"step": 5, "time/eval_general_s": 4.0, "time/eval_domain_s": 6.0},
        {"step": 10, "time/eval_general_s": 3.0, "time/eval_domain_s": 7.0},
    ]
    # Trainer wall time 120 s includes the two in-loop evaluations (20 s): share = 20 / 100.
    t = eval_timing(history, 120.0)
    assert t == {"train_s": 120.0, "eval_in_loop_s": 20.0, "eval_in_loop_count": 2, "eval_base_s": 30.0, "eval_base_cached": False, "eval_share": 0.2}
    history[0]["time/eval_cached"] = 1  # a cached step 0 cost nothing this run
    assert eval_timing(history, 120.0)["eval_base_s"] == 0.0


def test_precision_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert prec.resolve("fp32", "cpu") == "fp32" and prec.resolve("bf16", "cpu") == "bf16"
    monkeypatch.setattr(prec, "cpu_has_fast_bf16", lambda: False)
    assert prec.resolve("auto", "cpu") == "fp32"
    monkeypatch.setattr(prec, "cpu_has_fast_bf16", lambda: True)
    assert prec.resolve("auto", "cpu") == "bf16"
    x = torch.ones(2, 2)
    with prec.autocast("bf16", "cpu"):
        assert (x @ x).dtype == torch.bfloat16
    with prec.autocast("fp32", "cpu"):
        assert (x @ x).dtype == torch.float32
    with pytest.raises(ValueError):
        with prec.autocast("fp8", "cpu"):
            pass


def _randomize_lora(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)


def test_frozen_weights_cast_once_is_exact_and_restores() -> None:
    # Frozen weights that are not LoRA base layers (the MLP here): the bf16 copy holds exactly the
    # values autocast makes, so the logits are bit-identical.
    model = get_peft_model(tiny_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad(), prec.autocast("bf16", "cpu"):
        want = model(input_ids=x).logits  # fresh LoRA (B = 0): merging adds exactly 0
        with prec.eval_weights(model, "bf16"):
            layer = model.base_model.model.model.layers[0]
            assert layer.mlp.up_proj.weight.dtype == torch.bfloat16
            # The LoRA wrapper is out of the tree: its base Linear (merged weight) sits in its place.
            assert type(layer.self_attn.q_proj) is torch.nn.Linear and layer.self_attn.q_proj.weight.dtype == torch.bfloat16
            got = model(input_ids=x).logits
    assert torch.equal(got, want)
    after = dict(model.named_parameters())
    assert all(after[n] is p and p.dtype == torch.float32 for n, p in frozen.items())
    assert hasattr(model.base_model.model.model.layers[0].self_attn.q_proj, "lora_A")  # wrapper back


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_lora_merged_for_evaluation_matches_the_adapter_path(scale: float) -> None:
    from peft.helpers import rescale_adapter_scale

    model = _lora()
    _randomize_lora(model)
    model.eval()
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    w0 = q.base_layer.weight.detach().clone()
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=x).logits
    with torch.no_grad(), rescale_adapter_scale(model, scale):
        want = model(input_ids=x).logits
        with prec.eval_weights(model, "fp32"):
            assert model.base_model.model.model.layers[0].self_attn.q_proj is q.base_layer  # one matmul per adapted layer
            expect = w0 + scale * (q.lora_B["default"].weight @ q.lora_A["default"].weight) * (4 / 2)
            assert torch.allclose(q.base_layer.weight, expect, atol=1e-7)
            got = model(input_ids=x).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert (want - base).abs().max() > 1e-3  # the adapter does change the output: the check has teeth
    # Restored: the original tensor, unchanged, and the adapter path back on.
    assert torch.equal(q.base_layer.weight, w0) and model.base_model.model.model.layers[0].self_attn.q_proj is q
    with torch.no_grad(), rescale_adapter_scale(model, scale):
        assert torch.equal(model(input_ids=x).logits, want)
    # DoRA is left on its own path (its merge is not a plain W + BA).
    dora = get_peft_model(tiny_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], use_dora=True))
    with prec.eval_weights(dora, "fp32"):
        assert hasattr(dora.base_model.model.model.layers[0].self_attn.q_proj, "lora_A")
