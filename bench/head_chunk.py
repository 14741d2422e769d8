"""Peak RSS of one training step (forward + backward, LoRA r64 on all linear layers, bf16 autocast)
with whole logits against the LM head applied in chunks (`train.head_chunk`).

    PYTHONPATH=src .venv/bin/python bench/head_chunk.py [--models gemma3-270m,smollm2-135m-instruct] [--batch 4] [--length 256] [--repeat 1] [--grad-ckpt]

Each measurement is a fresh child process (its ``ru_maxrss`` is that step's peak alone): the
model's own loss on whole logits (``model(input_ids, labels=...)``, what the Trainer computes), or
the loss the pipeline computes from the final hidden states, 256 positions at a time
(``forgetless.lmhead.final_hidden`` + ``chunked_ce_sum``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, torch
from peft import LoraConfig, get_peft_model
from forgetless.lmhead import chunked_ce_sum, final_hidden, lm_split
from forgetless.models import load_model
name, chunk, batch, length, repeat, ckpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
torch.manual_seed(0)
base = load_model(name)
if ckpt:  # what TrainingArguments(gradient_checkpointing=True) does to the model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.enable_input_require_grads()
model = get_peft_model(base, LoraConfig(r=64, lora_alpha=64, target_modules="all-linear"))
model.train()
ids = torch.randint(0, 1000, (batch, length), generator=torch.Generator().manual_seed(0))
times = []
for _ in range(repeat):
    t0 = time.time()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if chunk:
            h = final_hidden(model, {"input_ids": ids})
            loss = chunked_ce_sum(lm_split(model)[1], h[:, :-1].reshape(-1, h.shape[-1]), ids[:, 1:].reshape(-1), chunk=chunk) / ids[:, 1:].numel()
        else:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    times.append(time.time() - t0)
# The first step pays one-off costs (allocator growth, kernel selection): the step time is the
# median of the later ones when there are any.
later = sorted(times[1:]) or times
print(json.dumps({"loss": float(loss), "step_s": later[len(later) // 2], "vocab": model.get_output_embeddings().weight.shape[0]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="gemma3-270m,smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=1, help="steps per measurement; step s is the median after the first")
    ap.add_argument("--grad-ckpt", action="store_true", help="also measure chunks of 256 with gradient checkpointing")
    a = ap.parse_args()
    rows = []
    for model in a.models.split(","):
        for chunk, ckpt in ((0, 0), (256, 0), *(((256, 1),) if a.grad_ckpt else ())):
            proc = subprocess.Popen([sys.executable, "-c", CHILD, model, str(chunk), str(a.batch), str(a.length), str(a.repeat), str(ckpt)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            _, status, usage = os.wait4(proc.pid, 0)
            out = json.loads(proc.stdout.read().strip().splitlines()[-1]) if os.waitstatus_to_exitcode(status) == 0 else {}
            rows.append({"model": model, "head": (f"chunks of {chunk}" if chunk else "whole logits") + (" + gradient checkpointing" if ckpt else ""), "peak_rss_gb": usage.ru_maxrss / 1024**2, **out})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n| model | vocabulary | loss from | peak RSS GB | step s | loss |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r.get('vocab', '?')} | {r['head']} | {r['peak_rss_gb']:.2f} | {r.get('step_s', float('nan')):.1f} | {r.get('loss', float('nan')):.4f} |")


if __name__ == "__main__":
    main()
