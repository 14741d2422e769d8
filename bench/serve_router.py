"""Router quality on the embedded model and the sample pharma domain, per layer and covariance shrinkage.

Domain = user turns of train_qa.jsonl + docs.jsonl; calibration general prompts = the evaluate
stage's general_prompts.v1.jsonl; measured on held-out domain questions (heldout_qa, heldout_mc)
against the serve stage's own general prompts (a different set). Prints one row per setting:
AUROCs and the share of each set the threshold (5% of domain texts to base) sends to the base.

    .venv/bin/python bench/serve_router.py                         # layer 8, shrinkage sweep
    .venv/bin/python bench/serve_router.py --layers 0 4 8 16 30 --shrinkage lw
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from forgetless.io import read_jsonl  # noqa: E402
from forgetless.models import load_model, load_tokenizer  # noqa: E402
from forgetless.serve.prompts import encode_user_texts  # noqa: E402
from forgetless.serve.router import _oof_mahalanobis, auroc, fit_gaussian, pooled_hidden_states  # noqa: E402

PHARMA = ROOT / "examples" / "data" / "pharma"
PKG = ROOT / "src" / "forgetless"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[8])
    ap.add_argument("--shrinkage", nargs="+", default=["lw", "0.95", "0.98", "0.99", "0.995", "0.999", "1.0"])
    ap.add_argument("--target", type=float, default=0.05, help="share of domain texts sent to base by the threshold")
    args = ap.parse_args()
    tok, model = load_tokenizer("smollm2-135m-instruct"), load_model("smollm2-135m-instruct")
    cal_general = [r["prompt"] for r in read_jsonl(PKG / "evaluate" / "data" / "general_prompts.v1.jsonl")]
    sets = {
        "domain": [r["messages"][0]["content"] for r in read_jsonl(PHARMA / "train_qa.jsonl")]
        + [r["text"] for r in read_jsonl(PHARMA / "docs.jsonl")],
        "cal_general": cal_general,
        "heldout_qa": [r["question"] for r in read_jsonl(PHARMA / "heldout_qa.jsonl")],
        "heldout_mc": [r["question"] for r in read_jsonl(PHARMA / "heldout_mc.jsonl")],
        "general": [p for p in (r["prompt"] for r in read_jsonl(PKG / "serve" / "data" / "general_prompts.jsonl")) if p not in set(cal_general)],
    }
    enc = {k: encode_user_texts(tok, v) for k, v in sets.items()}
    print("| layer | shrinkage | cal AUROC | QA AUROC | MC AUROC | QA->base | MC->base | general->base |")
    print("|---|---|---|---|---|---|---|---|")
    for layer in args.layers:
        with torch.no_grad():
            f = {k: pooled_hidden_states(model, v, layer=layer) for k, v in enc.items()}
        for sh in args.shrinkage:
            s = None if sh == "lw" else float(sh)
            mean, _, prec, used = fit_gaussian(f["domain"], s)
            md = lambda x: np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", x - mean, prec, x - mean), 0))  # noqa: E731
            oof = _oof_mahalanobis(f["domain"], 5, 0, s)
            thr = np.quantile(oof, 1 - args.target)
            qa, mc, gen = md(f["heldout_qa"]), md(f["heldout_mc"]), md(f["general"])
            name = f"LW ({used:.2f})" if s is None else sh
            print(f"| {layer} | {name} | {auroc(oof, md(f['cal_general'])):.3f} | {auroc(qa, gen):.3f} | {auroc(mc, gen):.3f} | "
                  f"{np.mean(qa > thr):.0%} | {np.mean(mc > thr):.0%} | {np.mean(gen > thr):.0%} |")  # fmt: skip


if __name__ == "__main__":
    main()
