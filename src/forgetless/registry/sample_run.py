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
from ..testing import save_tiny_model, tiny_model, tiny_tokenizer


def make_run_folder(
    run_dir: str | Path,
    *,
    base_dir: str | Path | None = None,
    domain_f1: tuple[float, float] = (0.10, 0.40),
    general_kl: float = 0.02,
    budget: float | None = 0.05,
    lora_seed: int = 1,
    lora_scale: float = 0.5,
) -> Path:
    """Write a run folder at ``run_dir`` and return it.

    ``domain_f1`` is (base, selected) domain token F1; ``general_kl`` the selected step's KL to the
    base; ``budget`` the config's ``budget.general_kl``. The adapter's B matrices are random (scaled
    by ``lora_scale``) so the adapted model really differs from the base.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    base = Path(base_dir) if base_dir is not None else run_dir.parent / "tiny-base"
    if not (base / "config.json").exists():
        save_tiny_model(base)
    tok = tiny_tokenizer()
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

    config = {
        "run_dir": str(run_dir.resolve()),
        "seed": 0,
        "model": {"name": str(base.resolve()), "dtype": "float32", "trust_remote_code": False, "revision": None},
        "data": {"train": [], "replay": None},
        "lora": {"r": 4, "alpha": 8.0},
        "budget": {"general_kl": budget},
    }
    atomic_write_text(run_dir / artifacts.RESOLVED_CONFIG, yaml.safe_dump(config, sort_keys=False))
    atomic_write_json(
        run_dir / artifacts.RUN_INFO,
        {"hashes": {"base_weights": "b" * 64, "tokenizer": "t" * 64, "data": "d" * 64}, "code_version": "forgetless 0.1.0+test"},
    )
    b, s = domain_f1
    rows = [
        {"step": 0, "domain/token_f1": b, "domain/mc_acc": 0.2, "general/kl": 0.0},
        {"step": 10, "domain/token_f1": (b + s) / 2, "domain/mc_acc": 0.3, "general/kl": general_kl / 2},
        {"step": 20, "domain/token_f1": s, "domain/mc_acc": 0.4, "general/kl": general_kl},
    ]
    write_jsonl(run_dir / artifacts.METRICS, rows)
    atomic_write_json(run_dir / artifacts.SUMMARY, {"selected_step": 20})
    return run_dir
