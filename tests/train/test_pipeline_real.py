"""One real run on the embedded model: tokens stage + LoRA + both suites + exports (slow: ~1 min)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.pipeline import run_pipeline

PHARMA = Path(__file__).resolve().parents[2] / "examples" / "data" / "pharma"


@pytest.mark.slow
def test_real_model_with_domain_tokens(tmp_path: Path) -> None:
    docs = [json.loads(l) for l in (PHARMA / "docs.jsonl").read_text().splitlines()][:8]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    qa = (PHARMA / "heldout_qa.jsonl").read_text().splitlines()[:4]
    (tmp_path / "qa.jsonl").write_text("\n".join(qa) + "\n")
    (tmp_path / "terms.json").write_text(json.dumps(["Zorvanex", "Quelbitrine", "Marrowick"]))
    cfg = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}", f"data.train=[{tmp_path / 'train.jsonl'}]", f"data.eval_qa={tmp_path / 'qa.jsonl'}",
            "data.max_length=128", "train.max_steps=2", "train.batch_size=2", "train.lr=1e-3", "train.scale_sweep=[]", "train.replay_ratio=0",
            "eval.general_limit=6", "eval.general_max_new_tokens=12", "eval.heldout_max_new_tokens=8", "eval.qa_max_new_tokens=8", "eval.general_suites=[]",
            "tokens.enabled=true", f"tokens.terms_file={tmp_path / 'terms.json'}",
        ],
    )  # fmt: skip
    summary = run_pipeline(cfg)
    run = cfg.run_dir
    info = json.loads((run / A.TOKENS_DIR / A.TOKENS_INFO).read_text())
    assert info["k"] > 0 and info["new_vocab"] == info["old_vocab"] + info["k"]
    history = [json.loads(l) for l in (run / A.METRICS).read_text().splitlines()]
    # Step 0: the extended model (adapter off) against the original base's cached answers.
    # Hewitt's bound is on the expected KL; mean-of-pieces rows sit far below it on average.
    assert 0.0 <= history[0]["general/kl"] <= info["kl_bound"]
    export = run / A.TOKENS_DIR / A.TOKENS_EXPORT_DIR
    assert {p.name for p in export.iterdir()} >= {A.TOKENS_EXTENDED_BASE_DIR, A.TOKENS_PLAIN_ADAPTER_DIR, A.TOKENS_MERGED_DIR, A.TOKENS_EXPORT_INFO}
    assert summary["router"]["calibration_auroc"] > 0.5
    run_info = json.loads((run / A.RUN_INFO).read_text())
    assert run_info["tokenizer_extended"] and run_info["tokenizer_extended"] != run_info["hashes"]["tokenizer"]
    # Serving and the served-system report load the adapter with the run's own (extended) tokenizer
    # and grow the base's embeddings to fit it; with the base tokenizer the adapter's rows do not fit.
    from forgetless.adapter import attach_run_adapter, run_tokenizer
    from forgetless.models import load_model

    tok = run_tokenizer(run / A.ADAPTER_DIR, cfg.model)
    assert len(tok) == info["new_vocab"]
    served = attach_run_adapter(load_model(cfg.model.name), run / A.ADAPTER_DIR, tok)
    assert served.get_input_embeddings().weight.shape[0] >= info["new_vocab"]
    assert json.loads((run / A.SERVED_JSON).read_text())["scores"]  # the run's own served report ran on it
    assert (run / A.ADAPTER_DIR / "tokenizer_config.json").exists()  # the adapter travels with its vocabulary
