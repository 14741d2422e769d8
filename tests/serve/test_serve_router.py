"""Router unit tests: user-token pooling, hand-worked scores, calibration files and thresholds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.numpy import load_file

from forgetless import artifacts
from forgetless.errors import ForgetlessError, InputError
from forgetless.evaluate.scoring import continuation_scores
from forgetless.serve.prompts import encode_chat, encode_text
from forgetless.serve.router import (
    Router,
    auroc,
    calibrate_router,
    default_layer,
    fit_gaussian,
    load_router,
    pooled_hidden_states,
    user_token_logprob,
)
from forgetless.testing import tiny_model, tiny_tokenizer
from serve_helpers import DOMAIN, GENERAL


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(len(tok), seed=0)


def test_user_positions_exclude_the_template_and_the_system_prompt(tok):
    # <|im_start|> user hello world <|im_end|> <|im_start|> assistant
    assert encode_chat(tok, [{"role": "user", "content": "hello world"}]).user_positions == [2, 3]
    # the user's own word "user" is found after the role label, and the system prompt is skipped
    e = encode_chat(tok, [{"role": "system", "content": "you are a helpful"}, {"role": "user", "content": "user"}])
    assert tok.convert_ids_to_tokens(e.ids)[9] == "user" and e.user_positions == [9]
    # every user turn of a multi-turn chat, no assistant turn
    e = encode_chat(tok, [{"role": "user", "content": "cat"}, {"role": "assistant", "content": "yes"}, {"role": "user", "content": "dog"}])
    assert [tok.convert_ids_to_tokens(e.ids)[i] for i in e.user_positions] == ["cat", "dog"]
    assert encode_text(tok, "hello world").user_positions == [0, 1]


def test_auroc_hand_worked():
    # OOD scores 2.5 and 4 against in-domain 1, 2, 3: 5 of the 6 pairs are ordered right.
    assert auroc([1, 2, 3], [2.5, 4]) == pytest.approx(5 / 6)
    assert auroc([0, 1], [2, 3]) == 1.0


def test_mahalanobis_hand_worked():
    r = Router(method="mahalanobis", threshold=1.0, mean=np.zeros(2), precision=np.diag([0.25, 1.0]))
    # (2, 1): 2^2/4 + 1^2/1 = 2
    assert r.mahalanobis(np.array([[2.0, 1.0], [0.0, 0.0]])) == pytest.approx([math.sqrt(2), 0.0])
    r.score_scale = 0.5
    assert r.margin(2.0) == pytest.approx(2.0)


def test_shrunk_covariance_is_invertible_with_fewer_texts_than_dimensions():
    x = np.random.default_rng(0).normal(size=(5, 20))  # n=5 << p=20: the sample covariance is singular
    assert np.linalg.matrix_rank(np.cov(x.T)) < 20
    mean, cov, prec, shrinkage = fit_gaussian(x)  # Ledoit-Wolf's estimate
    assert 0 < shrinkage <= 1
    _, fixed_cov, _, s = fit_gaussian(x, 0.5)
    assert s == 0.5
    mu = np.trace(np.cov(x.T, bias=True)) / 20
    assert np.allclose(fixed_cov, 0.5 * np.cov(x.T, bias=True) + 0.5 * mu * np.eye(20))
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    assert np.allclose(cov @ prec, np.eye(20), atol=1e-6)
    assert np.allclose(mean, x.mean(0))


def test_pooling_is_the_mean_over_user_tokens(tok, model):
    p = encode_chat(tok, [{"role": "user", "content": "hello world"}])
    q = encode_chat(tok, [{"role": "user", "content": "red green cat dog"}])
    feats = pooled_hidden_states(model, [p, q], layer=1)  # batched, padded, forward stopped after layer 1
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([p.ids]), output_hidden_states=True).hidden_states
    assert np.allclose(feats[0], hs[1][0, [2, 3]].mean(0).numpy(), atol=1e-5)
    last = pooled_hidden_states(model, [p], layer=-1)  # the last (normed) state comes from the full pass
    assert np.allclose(last[0], hs[-1][0, [2, 3]].mean(0).numpy(), atol=1e-5)


def test_user_token_logprob_matches_continuation_scores(tok, model):
    p = encode_chat(tok, [{"role": "user", "content": "hello world"}])
    (total, n), = continuation_scores(model, [(p.ids[:2], p.ids[2:4])])
    assert user_token_logprob(model, [p])[0] == pytest.approx(total / n, abs=1e-5)


def test_default_layer_is_a_quarter_of_the_depth(model):
    assert default_layer(model) == 1  # 2 layers: never the embeddings
    big = tiny_model(seed=0, layers=8)
    assert default_layer(big) == 2


def test_calibrate_writes_router_files_and_sets_the_threshold_quantile(tok, model, tmp_path):
    info = calibrate_router(model, tok, DOMAIN, GENERAL, tmp_path, target_domain_to_base=0.25, folds=4, method="mahalanobis")
    saved = json.loads((tmp_path / artifacts.ROUTER_INFO).read_text())
    assert (tmp_path / artifacts.ROUTER).exists()
    assert saved["threshold"] == info["threshold"] and saved["method"] == "mahalanobis" and saved["layer"] == 1
    # 8 distinct out-of-fold domain scores, threshold at their 0.75 quantile: exactly 2 of 8 lie above it.
    assert saved["domain_to_base"] == 0.25
    assert 0.0 <= saved["calibration_auroc"] <= 1.0 and saved["shrinkage"] == 0.995 and saved["shrinkage_method"] == "fixed"
    assert saved["n_domain"] == 8 and saved["n_general"] == 6
    r = load_router(tmp_path)
    gen_scores = r.score(model, [encode_chat(tok, [{"role": "user", "content": t}]) for t in GENERAL])
    assert np.mean(gen_scores > r.threshold) == pytest.approx(saved["general_to_base"])


def test_likelihood_ratio_router_compares_adapter_with_base(tok, tmp_path):
    with pytest.raises(ForgetlessError, match="PeftModel"):
        calibrate_router(tiny_model(len(tok)), tok, DOMAIN, GENERAL, tmp_path, method="likelihood_ratio")
    torch.manual_seed(0)
    pm = get_peft_model(tiny_model(len(tok)), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    pm.eval()
    info = calibrate_router(pm, tok, DOMAIN, GENERAL, tmp_path, method="likelihood_ratio")
    assert info["method"] == "likelihood_ratio"
    assert set(load_file(str(tmp_path / artifacts.ROUTER))) == {"threshold"}  # no Gaussian to store
    r = load_router(tmp_path)
    p = encode_chat(tok, [{"role": "user", "content": GENERAL[0]}])
    with pm.disable_adapter():
        lp_base = user_token_logprob(pm, [p])[0]
    lp_ad = user_token_logprob(pm, [p])[0]
    assert lp_ad != lp_base
    assert r.score(pm, [p])[0] == pytest.approx(-(lp_ad - lp_base), abs=1e-6)


def test_bad_calibration_input_and_bad_router_files(tok, model, tmp_path):
    with pytest.raises(ForgetlessError, match="method"):
        calibrate_router(model, tok, DOMAIN, GENERAL, tmp_path, method="knn")
    with pytest.raises(ForgetlessError, match="at least 4 domain"):
        calibrate_router(model, tok, DOMAIN[:2], GENERAL, tmp_path)
    assert load_router(tmp_path) is None  # no router: the server sends auto requests to the adapter
    (tmp_path / artifacts.ROUTER_INFO).write_text(json.dumps({"method": "mahalanobis", "layer": 1}))
    with pytest.raises(InputError, match="threshold") as e:
        load_router(tmp_path)
    assert e.value.field == "threshold" and e.value.file.endswith(artifacts.ROUTER_INFO)
    (tmp_path / artifacts.ROUTER_INFO).write_text("{oops")
    with pytest.raises(InputError, match="not valid JSON"):
        load_router(tmp_path)
