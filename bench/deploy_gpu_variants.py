"""``forgetless bench`` on a GPU for all variants, 4-bit NF4 included, on a model with real SmolLM2 shapes.

Builds a run folder whose base has the architecture in CONFIG_DIR (random weights: speed and
memory depend on shapes, not values) and a rank-16 LoRA on every linear layer, then benchmarks
base / adapter / merged / nf4 on CUDA (each in its own process, as ``forgetless bench`` does) and
prints the table.

    python bench/deploy_gpu_variants.py CONFIG_DIR WORK_DIR [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

# forgetless.train.config.ALL_LINEAR, spelled out: that module needs pydantic, which GPU images may lack.
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_run(config_dir: Path, work: Path) -> Path:
    """A run folder (config, adapter) over a random-init base with CONFIG_DIR's shapes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base_dir, run = work / "base", work / "run"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir), dtype=torch.float32)
    model.save_pretrained(base_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=ALL_LINEAR))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.01)
    peft_model.save_pretrained(run / "adapter", safe_serialization=True)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump({"model": {"name": str(base_dir), "dtype": "float32"}}))
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config_dir", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--variants", default="base,adapter,merged,nf4")
    a = ap.parse_args()
    from rich.console import Console

    from forgetless.deploy.bench import run_bench
    from forgetless.deploy.cli import bench_table

    run = make_run(a.config_dir, a.work)
    res = run_bench(str(run), a.variants.split(","), concurrency=[1, 4, 8], max_new_tokens=64, repeats=3, device="cuda")
    Console(width=140).print(bench_table(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
