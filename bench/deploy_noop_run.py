"""Make a run folder whose adapter is an exact no-op (LoRA B = 0) on a real base, for deploy measurements.

With B = 0 the merged fp32 model IS the base, so every KL a deployment variant shows against the
base is that variant's own error (quantization, GGUF rounding). Takes seconds instead of a training
run; the config is the given YAML (default: examples/quickstart.yaml) resolved with run_dir.

    PYTHONPATH=src .venv/bin/python bench/deploy_noop_run.py /tmp/noop/run [--config examples/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from forgetless import artifacts
from forgetless.config import dump_config, load_config
from forgetless.io import atomic_write_json, atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"))
    a = ap.parse_args()

    from peft import LoraConfig, get_peft_model

    from forgetless.models import load_model, resolve_model

    run = Path(a.run_dir).resolve()
    cfg = load_config(a.config, [f"run_dir={run}"])
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / artifacts.RESOLVED_CONFIG, dump_config(cfg))
    model = load_model(cfg.model.name)
    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules="all-linear", lora_dropout=0.0)
    peft_model = get_peft_model(model, lcfg)  # PEFT initialises B to zero: an exact no-op
    peft_model.save_pretrained(run / artifacts.ADAPTER_DIR, safe_serialization=True)
    p = run / artifacts.ADAPTER_DIR / "adapter_config.json"
    acfg = json.loads(p.read_text())
    acfg["base_model_name_or_path"] = resolve_model(cfg.model.name)
    atomic_write_json(p, acfg)
    print(run)


if __name__ == "__main__":
    main()
