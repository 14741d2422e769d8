"""The whole pipeline on a tiny *base* model without a chat template (Gemma 3 architecture), as
the embedded gemma3-270m runs it: plain-frame replay and evaluation, LoRA on Gemma's layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from peft import PeftModel

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.models import load_model, load_tokenizer
from forgetless.pipeline import run_pipeline
from forgetless.testing import save_tiny_base_model


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_base_model(tmp_path_factory.mktemp("tiny-gemma3"))


def test_base_model_run_end_to_end(tiny_run: Path, base_model_dir: Path) -> None:
    # Replay on (self-generated, so chat records in the plain frame) with KL to the base.
    cfg = load_config(tiny_run / "cfg.yaml", [f"model.name={base_model_dir}", "train.replay_ratio=0.3", "train.kl_to_base=1.0"])
    summary = run_pipeline(cfg)
    run = cfg.run_dir
    assert load_tokenizer(str(base_model_dir)).chat_template is None
    info = json.loads((run / A.RUN_INFO).read_text())
    assert info["prompt_format"] == "plain"
    assert info["dataset"]["replay_rows"] > 0
    history = [json.loads(l) for l in (run / A.METRICS).read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 3, 6]
    for h in history:  # both suites at every checkpoint
        for key in ("general/kl", "general/nll", "domain/qa_f1", "domain/mc_acc", "domain/ppl"):
            assert key in h, (h["step"], key)
    assert history[0]["general/kl"] == pytest.approx(0.0, abs=1e-6) and history[-1]["general/kl"] > 0
    # LoRA sits on Gemma's linear layers (sliding-window and full-attention layers alike); its
    # q_norm / k_norm are RMSNorms, not adapted, and the export is plain PEFT.
    adapter_cfg = json.loads((run / A.ADAPTER_DIR / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    peft_model = PeftModel.from_pretrained(load_model(str(base_model_dir)), str(run / A.ADAPTER_DIR))
    adapted = {n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    for i in (0, 1):  # layer 0 slides, layer 1 attends to everything
        assert any(a.endswith(f"layers.{i}.self_attn.q_proj") for a in adapted) and any(a.endswith(f"layers.{i}.mlp.down_proj") for a in adapted)
    assert not any("norm" in a for a in adapted)
    assert summary["router"] is not None and summary["router"]["threshold"] is not None
