"""What the drift monitor adds to the engine's work, measured as a ratio in one process.

On a loaded shared machine, end-to-end latency A/B (``bench/serve_load.py --monitor-ab``) swings by
more than the effect. This measures the two costs back to back, interleaved, on the same weights:

* one micro-batch as the engine runs it (``Engine._generate``: ``--batch`` chat requests, greedy,
  ``--max-tokens`` tokens each), divided by the batch size: the engine time per request;
* one KL scoring of a sampled answer (``monitor.answer_kl``: one two-row forward pass).

The monitor's share of engine time is ``rate * adapter_share * t_kl / t_request``, which is the
latency overhead when the engine is the bottleneck (scoring runs on the engine thread between
batches). Prints the table.

    .venv/bin/python bench/serve_monitor_cost.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from forgetless.io import read_jsonl  # noqa: E402
from forgetless.models import load_model, load_tokenizer  # noqa: E402
from forgetless.serve.engine import Engine, GenParams, Job  # noqa: E402
from forgetless.serve.metrics import ServeMetrics  # noqa: E402
from forgetless.serve.monitor import answer_kl  # noqa: E402
from forgetless.serve.prompts import encode_chat  # noqa: E402

PHARMA = ROOT / "examples" / "data" / "pharma"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rate", type=float, default=0.03)
    ap.add_argument("--adapter-share", type=float, default=2 / 3, help="share of requests the adapter answers (serve_load: auto-domain + adapter)")
    args = ap.parse_args()
    from peft import LoraConfig, get_peft_model

    torch.set_grad_enabled(False)
    tok, base = load_tokenizer("smollm2-135m-instruct"), load_model("smollm2-135m-instruct")
    torch.manual_seed(0)
    pm = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
                        adapter_name="a").eval()  # fmt: skip
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            p.normal_(0, 1e-3)
    eng = Engine(pm, tok, adapter_name="a", router=None, metrics=ServeMetrics(), max_batch=args.batch)
    qs = [r["question"] for r in read_jsonl(PHARMA / "heldout_qa.jsonl")]
    prompts = [encode_chat(tok, [{"role": "user", "content": q}]) for q in qs]
    t_req, t_kl = [], []
    for rep in range(args.repeats):
        jobs = [Job(prompt=prompts[(rep * args.batch + i) % len(prompts)], want="adapter", params=GenParams(max_tokens=args.max_tokens),
                    deliver=lambda ev: None, route="adapter") for i in range(args.batch)]  # fmt: skip
        t0 = time.perf_counter()
        eng._generate(jobs)
        t_req.append((time.perf_counter() - t0) / args.batch)
        j = jobs[0]
        t0 = time.perf_counter()
        answer_kl(pm, "a", j.prompt.ids, j.generated)
        t_kl.append(time.perf_counter() - t0)
    req, kl = float(np.median(t_req)), float(np.median(t_kl))
    share = args.rate * args.adapter_share * kl / req
    print("| quantity | value |\n|---|---|")
    print(f"| engine time per request (batch {args.batch}, {args.max_tokens} tokens, median of {args.repeats}) | {1000 * req:.1f} ms |")
    print(f"| one KL scoring (prompt + answer, two rows) | {1000 * kl:.1f} ms |")
    print(f"| monitor share of engine time at rate {args.rate}, adapter share {args.adapter_share:.2f} | {100 * share:.2f}% |")


if __name__ == "__main__":
    main()
