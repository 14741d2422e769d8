"""Token-level novelty and the combined mahalanobis_tokens router."""

from __future__ import annotations

import json

import numpy as np
import pytest

from forgetless import artifacts
from forgetless.serve.prompts import encode_chat
from forgetless.serve.router import calibrate_router, load_router
from forgetless.serve.router_tokens import TokenBank
from forgetless.testing import tiny_model, tiny_tokenizer
from serve_helpers import DOMAIN, GENERAL


def test_novelty_hand_worked():
    # Identity standardisation: the bank holds the unit vectors e1 and e2 (one text each).
    bank = TokenBank(np.zeros(3), np.ones(3), np.array([[1.0, 0, 0], [0, 1.0, 0]]), owner=np.array([0, 1]))
    # A prompt of two tokens: e1 (seen: novelty 0) and e3 (orthogonal to both: novelty 1).
    states = [np.array([[2.0, 0, 0], [0, 0, 5.0]])]
    assert bank.novelty(states, quantile=1.0)[0] == pytest.approx(1.0)
    assert bank.novelty(states, quantile=0.0)[0] == pytest.approx(0.0)
    assert bank.novelty(states, quantile=0.5)[0] == pytest.approx(0.5)  # linear interpolation
    # Leave-one-out: text 0 (= e1) compared with text 1 (= e2) only: cosine 0, novelty 1.
    assert bank.novelty([np.array([[1.0, 0, 0]])], quantile=1.0, leave_out_own=True)[0] == pytest.approx(1.0)
    fitted = TokenBank.fit([np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 1.0]])])
    assert fitted.bank.shape == (3, 2) and np.allclose(np.linalg.norm(fitted.bank, axis=1), 1.0)


def test_mahalanobis_tokens_round_trip_and_combined_score(tmp_path):
    tok, model = tiny_tokenizer(), tiny_model(len(tiny_tokenizer()), seed=0).eval()
    info = calibrate_router(model, tok, DOMAIN, GENERAL, tmp_path, folds=4)
    saved = json.loads((tmp_path / artifacts.ROUTER_INFO).read_text())
    assert saved["method"] == info["method"] == "mahalanobis_tokens" and saved["threshold"] == 0.0
    r = load_router(tmp_path)
    assert r.tokens is not None and r.tokens.bank.shape[0] == saved["domain_tokens"]
    prompts = [encode_chat(tok, [{"role": "user", "content": t}]) for t in GENERAL]
    scores = r.score(model, prompts)
    # The loaded router (fp16 token bank) reproduces calibration's routing of the general prompts.
    assert np.mean(scores > 0) == pytest.approx(saved["general_to_base"])
    # The token part's threshold is the 0.1 quantile of the general prompts' novelties, so at
    # least 90% of them are past it: the combined score (max of the two margins) sends them away.
    assert saved["general_to_base"] >= 0.8
    # A domain text scored against a bank that holds it has token novelty ~0 (every token has its twin).
    own = r.tokens.novelty([r.tokens.bank[:3] * r.tokens.std + r.tokens.mean], quantile=1.0)
    assert own[0] == pytest.approx(0.0, abs=2e-3)
