"""Domain loss at equal LoRA steps, without and with the extended vocabulary (sample domain, real model).

    .venv/bin/python bench/tokens_train.py [--steps 4] [--batch-size 8] [--lr 1e-3] [--token-lr 1e-2] [--init pieces]

Held-out = every 5th document of examples/data/pharma/docs.jsonl (21 docs), training = the other
84. Loss is nats per character of the held-out docs, so the two tokenizations are comparable.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from forgetless.models import load_model, load_tokenizer
from forgetless.tokens.analyze import load_texts
from forgetless.tokens.compare import compare_extension
from forgetless.tokens.extend import load_terms_file

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--token-lr", type=float, default=1e-2)
    ap.add_argument("--init", default="pieces", choices=["pieces", "mean"])
    args = ap.parse_args()
    docs = load_texts([ROOT / "examples/data/pharma/docs.jsonl"])
    terms = load_terms_file(ROOT / "examples/data/pharma/terms.json")
    held, train = docs[::5], [d for i, d in enumerate(docs) if i % 5]
    t0 = time.time()
    r = compare_extension(
        load_model(args.model), load_tokenizer(args.model), terms, train, held,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, token_lr=args.token_lr, init=args.init,
    )
    print(f"{len(terms)} terms ({r['new_tokens']} tokens), {args.steps} steps x {args.batch_size} docs, lr {args.lr}, token lr {args.token_lr}, init {args.init}")
    print(f"{'arm':<10}{'nats/char step 0':>18}{f'nats/char step {args.steps}':>18}")
    for arm in ("base", "extended"):
        print(f"{arm:<10}{r[arm]['nll_per_char_step0']:>18.4f}{r[arm]['nll_per_char_final']:>18.4f}")
    print(f"wall {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
