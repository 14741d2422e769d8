"""Router against neighbouring specialties: mahalanobis vs mahalanobis_tokens, and the token part's sweep.

Embedded model, base only (the router never needs the adapter). Domain = the sample pharma run's
training texts (user turns of train_qa.jsonl + docs.jsonl), calibration general prompts = the
evaluate stage's general_prompts.v1.jsonl; measured on held-out domain questions (heldout_qa +
heldout_mc), the serve stage's own general prompts (minus calibration ones) and the two
neighbouring-specialty sets in serve/data. Prints, per setting, the share of each set routed to
its expected side and the AUROCs against the held-out domain questions.

    .venv/bin/python bench/serve_router_neighbours.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from forgetless.io import read_jsonl  # noqa: E402
from forgetless.models import load_model, load_tokenizer  # noqa: E402
from forgetless.serve.prompts import encode_user_texts  # noqa: E402
from forgetless.serve.router import DEFAULT_SHRINKAGE, _oof_mahalanobis, auroc, default_layer, fit_gaussian  # noqa: E402
from forgetless.serve.router_tokens import TokenBank, token_states  # noqa: E402
from forgetless.serve.routereval import heldout_general, load_neighbours  # noqa: E402

PHARMA = ROOT / "examples" / "data" / "pharma"
PKG = ROOT / "src" / "forgetless"


def main() -> None:
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    tok, model = load_tokenizer("smollm2-135m-instruct"), load_model("smollm2-135m-instruct")
    model.eval()
    layer = default_layer(model)
    cal = [r["prompt"] for r in read_jsonl(PKG / "evaluate" / "data" / "general_prompts.v1.jsonl")]
    nb = load_neighbours()
    sets = {
        "domain": [r["messages"][0]["content"] for r in read_jsonl(PHARMA / "train_qa.jsonl")] + [r["text"] for r in read_jsonl(PHARMA / "docs.jsonl")],
        "cal": cal,
        "held": [r["question"] for r in read_jsonl(PHARMA / "heldout_qa.jsonl")] + [r["question"] for r in read_jsonl(PHARMA / "heldout_mc.jsonl")],
        "general": heldout_general(cal),
        "vet": nb["veterinary"],
        "legal": nb["legal"],
    }
    st = {k: token_states(model, encode_user_texts(tok, v), layer=layer, batch_size=32) for k, v in sets.items()}
    pooled = {k: np.stack([s.mean(0) for s in v]).astype(np.float64) for k, v in st.items()}
    mean, _, prec, _ = fit_gaussian(pooled["domain"], DEFAULT_SHRINKAGE)

    def maha(x: np.ndarray) -> np.ndarray:
        d = x - mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, prec, d), 0.0))

    m_thr = float(np.quantile(_oof_mahalanobis(pooled["domain"], 5, 0, DEFAULT_SHRINKAGE), 0.95))
    M = {k: maha(v) for k, v in pooled.items()}
    kinds = ("held", "general", "vet", "legal")
    print(f"layer {layer}; sizes: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()))
    print("\n| router | held -> adapter | general -> base | vet -> base | legal -> base | AUROC general / vet / legal |\n|---|---|---|---|---|---|")

    def row(name: str, to_base: dict[str, np.ndarray], score: dict[str, np.ndarray]) -> None:
        share = {k: float(np.mean(to_base[k])) for k in kinds}
        aucs = " / ".join(f"{auroc(score['held'], score[k]):.3f}" for k in ("general", "vet", "legal"))
        print(f"| {name} | {1 - share['held']:.3f} | {share['general']:.3f} | {share['vet']:.3f} | {share['legal']:.3f} | {aucs} |")

    row("mahalanobis", {k: M[k] > m_thr for k in kinds}, M)
    bank = TokenBank.fit(st["domain"])
    for q in (0.7, 0.8, 0.9):
        T = {k: bank.novelty(st[k], quantile=q) for k in ("cal", *kinds)}
        for g in (0.05, 0.1, 0.2, 0.3):
            t_thr = float(np.quantile(T["cal"], g))
            row(f"mahalanobis_tokens q={q} g={g}", {k: (M[k] > m_thr) | (T[k] > t_thr) for k in kinds}, T)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
