"""Build a small, complete run folder from the tiny test model: for tests of the registry, bench and report.

The folder has everything the training pipeline writes (resolved config, run info, metrics for
step 0 and later steps, summary, a real PEFT adapter on a local tiny base) so the deploy and
registry code paths run end to end in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .. import artifacts
from ..io import atomic_write_json, atomic_write_text, write_jsonl
from ..testing import save_tiny_model, tiny_bpe_tokenizer, tiny_model, tiny_tokenizer


def make_run_folder(
    run_dir: str | Path,
    *,
    base_dir: str | Path | None = None,
    domain_acc: tuple[float, float] = (0.20, 0.40),
    general_kl: float = 0.02,
    budget: float | None = 0.05,
    lora_seed: int = 1,
    lora_scale: float = 0.5,
    bpe: bool = False,
) -> Path:
    """Write a run folder at ``run_dir`` and return it.

    ``domain_acc`` is (base, selected) domain multiple-choice accuracy (the primary domain metric); ``general_kl`` the selected step's KL to the
    base; ``budget`` the config's ``budget.general_kl``. The adapter's B matrices are random (scaled
    by ``lora_scale``) so the adapted model really differs from the base. ``bpe``: the base uses a
    byte-level BPE tokenizer (what GGUF export needs) and lives in ``tiny-base-bpe``.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    base = Path(base_dir) if base_dir is not None else run_dir.parent / ("tiny-base-bpe" if bpe else "tiny-base")
    if not (base / "config.json").exists():
        save_tiny_model(base, bpe=bpe)
    tok = tiny_bpe_tokenizer() if bpe else tiny_tokenizer()
    model = tiny_model(len(tok))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0))
    torch.manual_seed(lora_seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, lora_scale)
    peft_model.save_pretrained(run_dir / artifacts.ADAPTER_DIR, safe_serialization=True)
    # PEFT records the in-memory base's name_or_path; point it at the base folder, as training does.
    cfg_path = run_dir / artifacts.ADAPTER_DIR / "adapter_config.json"
    acfg = json.loads(cfg_path.read_text())
    acfg["base_model_name_or_path"] = str(base.resolve())
    atomic_write_json(cfg_path, acfg)

    # Domain eval sets in the tiny tokenizer's vocabulary (so the suites see real tokens).
    qa = [{"question": "what drug treats marrowick syndrome", "answer": "zorvanex", "split": "seen"},
          {"question": "what is the dose of zorvanex", "answer": "five mg", "split": "seen"},
          {"question": "which side effect is blue vision", "answer": "zorvanex", "split": "new"}]  # fmt: skip
    mc = [{"question": "zorvanex treats", "choices": ["marrowick syndrome", "red dog"], "answer": 0},
          {"question": "zorvanex is made by", "choices": ["acme", "python code"], "answer": 0}]  # fmt: skip
    # Next to the base (shared by sibling runs, like real eval data): runs differ only where asked.
    qa_path, mc_path = base.parent / "domain_qa.jsonl", base.parent / "domain_mc.jsonl"
    write_jsonl(qa_path, qa)
    write_jsonl(mc_path, mc)
    config = {
        "run_dir": str(run_dir.resolve()),
        "seed": 0,
        "model": {"name": str(base.resolve()), "dtype": "float32", "trust_remote_code": False, "revision": None},
        "data": {"train": [], "replay": None, "eval_qa": str(qa_path.resolve()),
                 "eval_mc": str(mc_path.resolve())},
        "lora": {"r": 4, "alpha": 8.0},
        "eval": {"general_limit": 8, "general_max_new_tokens": 8, "qa_max_new_tokens": 4, "batch_size": 8},
        "budget": {"general_kl": budget},
    }  # fmt: skip
    atomic_write_text(run_dir / artifacts.RESOLVED_CONFIG, yaml.safe_dump(config, sort_keys=False))
    atomic_write_json(
        run_dir / artifacts.RUN_INFO,
        {
            "code_version": "0.1.0+test",
            "hashes": {"base_weights": "b" * 64, "tokenizer": "t" * 64, "data": {"/data/train.jsonl": "d" * 64}, "config": "c" * 64},
        },
    )
    b, s = domain_acc
    mid = (b + s) / 2
    # The layout forgetless.pipeline writes: one line per evaluation, step 0 = the base. Every domain
    # metric moves with domain_acc, so whichever one the training stage ranks by gives one verdict.
    def dom(v: float) -> dict[str, float]:
        return {"domain/qa_recall": v, "domain/qa_f1": v / 2, "domain/mc_acc": v, "domain/ppl": 10.0 / max(v, 0.01)}

    rows = [
        {"step": 0, "general/kl": 0.0, "general/nll": 1.5, **dom(b)},
        {"step": 10, "general/kl": general_kl / 2, "general/nll": 1.55, **dom(mid)},
        {"step": 20, "general/kl": general_kl, "general/nll": 1.6, **dom(s)},
    ]
    write_jsonl(run_dir / artifacts.METRICS, rows)
    summary = {
        "verdict": "step 20 is the best checkpoint inside the budget",
        "selected": {"step": 20, "metric": "domain/qa_recall", "score": s, "scale": 1.0},
        "base": rows[0],
        "final": rows[-1],
        "budget": {"general_kl": budget},
        "export": artifacts.ADAPTER_DIR,
    }
    atomic_write_json(run_dir / artifacts.SUMMARY, summary)
    return run_dir
