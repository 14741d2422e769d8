"""The router on the real embedded model and the sample pharma domain: held-out AUROC >= 0.95."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

import forgetless
from forgetless.io import read_jsonl
from forgetless.models import load_model, load_tokenizer
from forgetless.serve.prompts import encode_user_texts
from forgetless.serve.router import auroc, calibrate_router, load_router

PHARMA = Path(__file__).resolve().parents[2] / "examples" / "data" / "pharma"
PKG = Path(forgetless.__file__).parent


@pytest.mark.slow
def test_router_separates_heldout_domain_questions_from_general_prompts(tmp_path):
    if not (PHARMA / "heldout_qa.jsonl").exists():
        pytest.skip("sample domain not generated")
    t0 = time.perf_counter()
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct")
    torch.manual_seed(0)
    # Domain = what the run trains on: the user turns of the training chats and the documents.
    domain = [r["messages"][0]["content"] for r in read_jsonl(PHARMA / "train_qa.jsonl")]
    # A third of the documents keeps this test's cost down (documents are the longest texts).
    domain += [r["text"] for r in read_jsonl(PHARMA / "docs.jsonl")][::3]
    # Calibration general prompts and measurement general prompts are two different sets (written
    # by different people, for the evaluate and the serve stage); exact duplicates are dropped.
    cal_general = [r["prompt"] for r in read_jsonl(PKG / "evaluate" / "data" / "general_prompts.v1.jsonl")][::2]
    test_general = [r["prompt"] for r in read_jsonl(PKG / "serve" / "data" / "general_prompts.jsonl")]
    test_general = [p for p in test_general if p not in set(cal_general)]
    heldout = [r["question"] for r in read_jsonl(PHARMA / "heldout_qa.jsonl")]
    assert not set(heldout) & set(domain)

    info = calibrate_router(model, tok, domain, cal_general, tmp_path)
    router = load_router(tmp_path)
    s_held = router.score(model, encode_user_texts(tok, heldout))
    s_gen = router.score(model, encode_user_texts(tok, test_general))
    held_auroc = auroc(s_held, s_gen)
    elapsed = time.perf_counter() - t0
    print(f"calibration AUROC {info['calibration_auroc']:.3f}, held-out AUROC {held_auroc:.3f}, "
          f"held-out domain->base {np.mean(s_held > router.threshold):.3f}, general->base {np.mean(s_gen > router.threshold):.3f}, "
          f"{len(heldout)} held-out vs {len(test_general)} general, {elapsed:.1f} s")  # fmt: skip
    assert info["calibration_auroc"] >= 0.95
    assert held_auroc >= 0.95
    # The threshold, set for 5% of domain texts to the base, transfers to unseen phrasings: most
    # held-out domain questions stay on the adapter and most general prompts go to the base.
    assert np.mean(s_held > router.threshold) <= 0.25
    assert np.mean(s_gen > router.threshold) >= 0.8
