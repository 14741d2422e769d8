"""Decode speed of int8 against fp32 on CPU: torch's quantize_dynamic and (if installed) torchao.

Prints one table row per (threads, batch): fp32 tokens/s, each int8 backend's tokens/s and its
speed-up. The backends run interleaved, repeat by repeat, so a neighbour process stealing the CPU
hurts them alike; each figure is the median of the repeats.

    .venv/bin/python bench/deploy_int8_vs_fp32.py                       # the embedded SmolLM2-135M
    .venv/bin/python bench/deploy_int8_vs_fp32.py --random-init DIR     # same shapes, random weights

``--random-init`` builds the model from DIR/config.json with random weights: decode speed depends
on shapes, not values, so this measures the real architecture where the weights cannot be copied.
Quality (KL to base) is not measured here: that is ``forgetless quantize RUN``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import warnings

import torch

from forgetless.deploy.bench import PROMPTS, _one_run
from forgetless.deploy.variants import quantize_int8
from forgetless.evaluate.scoring import chat_prompt_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--random-init", default=None, help="folder with config.json + tokenizer: random weights, real shapes")
    ap.add_argument("--threads", default="0", help="comma-separated torch thread counts (0: torch's default)")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default="torch,torchao")
    ap.add_argument("--schemes", default="per-channel", help="int8 schemes (forgetless.deploy.variants.INT8_SCHEMES), comma-separated")
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args()
    warnings.simplefilter("ignore")

    from transformers import AutoConfig, AutoModelForCausalLM

    from forgetless.models import load_model, load_tokenizer

    if a.random_init:
        torch.manual_seed(0)
        tok = load_tokenizer(a.random_init)
        fp32 = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(a.random_init), dtype=torch.float32).eval()
        label = f"random-init {a.random_init}"
    else:
        tok = load_tokenizer(a.model)
        fp32 = load_model(a.model)
        label = a.model
    models = {"fp32": fp32}
    for b, sch in [(b, sch) for b in a.backends.split(",") for sch in a.schemes.split(",")]:
        try:
            models[f"int8-{b}-{sch}"] = quantize_int8(copy.deepcopy(fp32), b, sch)
        except Exception as e:  # noqa: BLE001 - a missing optional backend is reported, not fatal
            print(f"# backend {b} ({sch}) unavailable: {e}", file=sys.stderr)
    prompts = [chat_prompt_ids(tok, p) for p in PROMPTS]
    rows = []
    print(f"# {label}, {a.new_tokens} new tokens, median of {a.repeats}, torch {torch.__version__}")
    head = ["threads", "batch"] + [f"{n} tok/s" for n in models] + [f"{n} speed-up" for n in models if n != "fp32"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for th in [int(x) for x in a.threads.split(",")]:
        if th:
            torch.set_num_threads(th)
        for bs in [int(x) for x in a.batch.split(",")]:
            batch = [prompts[i % len(prompts)] for i in range(bs)]
            for m in models.values():
                _one_run(m, tok, batch, 4, "cpu")  # warm-up
            got: dict[str, list[float]] = {n: [] for n in models}
            for _ in range(a.repeats):
                for n, m in models.items():
                    got[n].append(_one_run(m, tok, batch, a.new_tokens, "cpu")["tokens_per_s"])
            med = {n: statistics.median(v) for n, v in got.items()}
            row = {"threads": torch.get_num_threads(), "batch": bs, **{f"{n}_tok_s": v for n, v in med.items()}}
            rows.append(row)
            cells = [str(row["threads"]), str(bs)] + [f"{med[n]:.1f}" for n in models] + [f"{med[n] / med['fp32']:.2f}x" for n in models if n != "fp32"]
            print("| " + " | ".join(cells) + " |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": label, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
