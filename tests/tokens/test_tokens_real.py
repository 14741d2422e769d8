"""The issue's guarantees on the sample domain with the embedded SmolLM2-135M (slow: real model)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from forgetless.models import load_model, load_tokenizer
from forgetless.tokens.analyze import analyze, general_sample_path, load_texts, term_fertility
from forgetless.tokens.checks import ids_unchanged, step0_kl
from forgetless.tokens.export import export_extended, load_exported
from forgetless.tokens.extend import add_terms_to_tokenizer, extend_vocabulary, load_terms_file, lora_token_kwargs, token_parameters

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PHARMA = ROOT / "examples" / "data" / "pharma"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def terms() -> list[str]:
    return load_terms_file(PHARMA / "terms.json")


@pytest.fixture(scope="module")
def domain() -> list[str]:
    return load_texts([PHARMA / "docs.jsonl", PHARMA / "train_qa.jsonl"])


def test_invented_terms_fertility_drops_to_one(terms, domain):
    tok = load_tokenizer(MODEL)
    before = term_fertility(tok, domain, terms)
    assert set(before) == set(terms)  # every invented term occurs in the sample domain
    assert min(before.values()) >= 2.0  # and the base tokenizer splits every one of them
    rep = analyze(tok, domain, load_texts([general_sample_path()]), terms=terms)
    assert rep["with_terms"]["new_tokens"] == 2 * len(terms)
    assert rep["with_terms"]["term_fertility_after"] == 1.0
    ext = copy.deepcopy(tok)
    add_terms_to_tokenizer(ext, terms)  # exactly what extend_vocabulary does to the tokenizer
    after = term_fertility(ext, domain, terms)
    assert after == {t: 1.0 for t in terms}
    assert rep["with_terms"]["domain_tokens_saved"] > 0.15 * rep["domain"]["seq_tokens"]


def test_general_text_ids_unchanged(terms):
    base = load_tokenizer(MODEL)
    ext = copy.deepcopy(base)
    add_terms_to_tokenizer(ext, terms)
    texts = load_texts([general_sample_path()])
    general_prompts = ROOT / "src" / "forgetless" / "evaluate" / "data" / "general_prompts.v1.jsonl"
    if general_prompts.exists():  # the evaluate stage's general prompts, as the chat template renders them
        for line in general_prompts.read_text().splitlines():
            if line.strip():
                msgs = [{"role": "user", "content": json.loads(line)["prompt"]}]
                texts.append(base.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
        assert len(texts) > 100
    same, differ = ids_unchanged(base, ext, texts)
    assert differ == [] and len(same) == len(texts)


def test_step0_kl_within_hewitt_bound(terms):
    base_tok = load_tokenizer(MODEL)
    base = load_model(MODEL)
    texts = load_texts([general_sample_path()])[:5]  # 5 texts, 200 positions: keeps this test short on CPU
    ids = base_tok(texts, add_special_tokens=False)["input_ids"]
    for init in ("pieces", "mean"):
        ext, tok = load_model(MODEL), copy.deepcopy(base_tok)
        res = extend_vocabulary(ext, tok, terms, init=init)
        assert tok(texts, add_special_tokens=False)["input_ids"] == ids
        kl = step0_kl(base, ext, ids)
        bound = res.kl_bound()  # log(1 + 104/49152) = 2.1e-3
        if init == "pieces":
            # Measured (all 40 texts): mean 7.3e-5, p99 1.2e-3, max 7.6e-3. The mean is the guarantee
            # for this init; a few positions exceed the per-position bound (see extend.py).
            assert float(kl.mean()) <= bound / 10
        else:
            assert float(kl.max()) <= bound  # Hewitt's init: the bound holds at every position


def test_export_matches_in_process_logits(terms, tmp_path):
    tok = load_tokenizer(MODEL)
    model = load_model(MODEL)
    res = extend_vocabulary(model, tok, terms)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **lora_token_kwargs(model, res))
    pm = get_peft_model(model, cfg).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # stand-in for training: move the new rows off their init
        for p in token_parameters(pm):
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.tensor([tok("Zorvanex is a lumeric reuptake modulator made by Norquist Biologics.")["input_ids"]])
    assert any(i in res.new_ids for i in ids[0].tolist())
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
    export_extended(pm, tok, tmp_path / "export", merged=False)  # merged is covered on tiny models
    loaded = load_exported(tmp_path / "export", which="adapter")
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    assert float((got - ref).abs().max()) <= 1e-4


def test_domain_loss_with_extension_no_worse_at_equal_steps(terms):
    from forgetless.tokens.compare import compare_extension

    docs = load_texts([PHARMA / "docs.jsonl"])
    # Short on purpose (CPU): 2 steps of 2 docs, 4 held-out docs; bench/tokens_train.py runs 4 steps
    # of 8 on 21 held-out docs. Held-out = every 5th doc; the rest train. Loss in nats per character
    # (the two tokenizations cut the same text into different numbers of tokens).
    held, train = docs[::5][:4], [d for i, d in enumerate(docs) if i % 5]
    r = compare_extension(load_model(MODEL), load_tokenizer(MODEL), terms, train, held, steps=2, batch_size=2)
    assert r["extended"]["nll_per_char_final"] <= r["base"]["nll_per_char_final"]
    assert r["base"]["nll_per_char_final"] < r["base"]["nll_per_char_step0"]  # training did something
