"""Step-0 KL(base || extended) on general text for both initialisations of the new rows.

    .venv/bin/python bench/tokens_kl.py [--model smollm2-135m-instruct] [--terms examples/data/pharma/terms.json]

Prints one row per init: k new tokens, Hewitt's bound log(1 + k/V), and the per-position KL over
the 40-text general sample (mean, 99th percentile, max, share of positions above the bound).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from forgetless.models import load_model, load_tokenizer
from forgetless.tokens.analyze import general_sample_path, load_texts
from forgetless.tokens.checks import step0_report
from forgetless.tokens.extend import extend_vocabulary, load_terms_file

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--terms", type=Path, default=ROOT / "examples/data/pharma/terms.json")
    args = ap.parse_args()
    terms = load_terms_file(args.terms)
    texts = load_texts([general_sample_path()])
    base_tok, base = load_tokenizer(args.model), load_model(args.model)
    print(f"model {args.model}, {len(terms)} terms, {len(texts)} general texts")
    print(f"{'init':<8}{'k':>5}{'bound':>11}{'KL mean':>11}{'KL p99':>11}{'KL max':>11}{'>bound':>9}{'ids same':>10}{'s':>6}")
    for init in ("pieces", "mean"):
        t0 = time.time()
        tok, ext = copy.deepcopy(base_tok), load_model(args.model)
        res = extend_vocabulary(ext, tok, terms, init=init)  # type: ignore[arg-type]
        r = step0_report(base, ext, base_tok, tok, texts, k=res.k)
        print(
            f"{init:<8}{res.k:>5}{r['bound']:>11.2e}{r['kl_mean']:>11.2e}{r['kl_p99']:>11.2e}{r['kl_max']:>11.2e}"
            f"{r['share_positions_over_bound']:>9.2%}{r['texts_ids_unchanged']:>6}/{r['texts']:<3}{time.time() - t0:>6.0f}"
        )


if __name__ == "__main__":
    main()
