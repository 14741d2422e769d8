"""Unit tests for vocabulary extension on a tiny byte-level BPE tokenizer and a tiny Llama (fast)."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from forgetless.errors import InputError
from forgetless.testing import tiny_model
from forgetless.tokens.checks import ids_unchanged, step0_kl, step0_report
from forgetless.tokens.extend import (
    extend_vocabulary,
    load_terms_file,
    lora_token_kwargs,
    param_groups,
    select_terms,
    term_forms,
    token_param_groups,
)
from forgetless.tokens.testing import tiny_bpe_tokenizer

# In tiny_bpe_tokenizer, "zorvanex" is unseen: bare it splits into z|or|v|an|e|x (ids below) and
# after a space the space is a piece of its own (Ġ = 223). "the cat sat" is common: the|Ġc|at|Ġsat.
ZORVANEX_BARE = [92, 270, 88, 273, 71, 90]
SPACE = 223


def untied_tiny_model(vocab: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def test_terms_forms_and_file_errors(tmp_path):
    assert term_forms("Zorvanex") == [" Zorvanex", "Zorvanex"]
    good = tmp_path / "t.txt"
    good.write_text("# invented drugs\nZorvanex\n\nMarrowick\n")
    assert load_terms_file(good) == ["Zorvanex", "Marrowick"]
    bad = tmp_path / "bad.txt"
    bad.write_text("Zorvanex\nMarrow ick\n")
    with pytest.raises(InputError, match=r"bad.txt:2: term 'Marrow ick' must be one word"):
        load_terms_file(bad)
    js = tmp_path / "t.json"
    js.write_text('["Zorvanex", 3]')
    with pytest.raises(InputError, match=r"t.json: field '\[1\]': must be a string, got int"):
        load_terms_file(js)
    js.write_text('{"terms": []}')
    with pytest.raises(InputError, match="expected a JSON list"):
        load_terms_file(js)
    js.write_text('["a",\n oops]')
    with pytest.raises(InputError, match=r"t.json:2: not valid JSON"):
        load_terms_file(js)


def test_tokenizer_ids_unchanged_unless_term_present():
    tok = tiny_bpe_tokenizer()
    base = tiny_bpe_tokenizer()
    model = tiny_model(len(tok))
    res = extend_vocabulary(model, tok, ["zorvanex"])
    spaced, bare = res.new_ids
    assert res.forms == [" zorvanex", "zorvanex"] and res.new_ids == [320, 321]
    assert res.pieces == [[SPACE] + ZORVANEX_BARE, ZORVANEX_BARE]
    # With the term: one token each, the neighbours keep their old ids.
    assert tok("the zorvanex cat")["input_ids"] == [287, spaced, 271, 264]
    assert tok("zorvanex sat")["input_ids"] == [bare, 293]
    # Without the term, and with it only inside a longer word: exactly the old ids.
    general = ["the cat sat", "what is the capital of france?", "xzorvanex", "the cat, (zorvanexes)", "zorvan ex"]
    same, differ = ids_unchanged(base, tok, general)
    assert same == [0, 1, 2, 3, 4] and differ == []
    # A word *starting* with the term after a space gets the term token (documented limitation).
    assert tok("the zorvanexes")["input_ids"][:2] == [287, spaced]
    # Decoding round-trips, spaces included.
    for text in ("the zorvanex cat", "zorvanex, the cat"):
        assert tok.decode(tok(text)["input_ids"]) == text


def test_pieces_init_tied_rows_are_mean_of_pieces():
    tok = tiny_bpe_tokenizer()
    model = tiny_model(len(tok))
    old = model.get_input_embeddings().weight.detach().clone()
    res = extend_vocabulary(model, tok, ["zorvanex"])
    w = model.get_input_embeddings().weight
    assert res.tied and model.get_output_embeddings().weight is w
    assert w.shape[0] == 322 and res.old_vocab == 320 and res.new_vocab == 322
    assert torch.equal(w[:320], old)  # old rows untouched
    # hand-worked: row = (sum of the piece rows) / number of pieces
    exp_bare = sum(old[i] for i in ZORVANEX_BARE) / 6
    exp_spaced = (old[SPACE] + sum(old[i] for i in ZORVANEX_BARE)) / 7
    torch.testing.assert_close(w[321], exp_bare, rtol=0, atol=1e-7)
    torch.testing.assert_close(w[320], exp_spaced, rtol=0, atol=1e-7)
    assert res.k == 2 and res.kl_bound() == pytest.approx(math.log(1 + 2 / 320))


def test_pieces_init_untied_writes_both_matrices():
    tok = tiny_bpe_tokenizer()
    model = untied_tiny_model(len(tok))
    inp = model.get_input_embeddings().weight.detach().clone()
    out = model.get_output_embeddings().weight.detach().clone()
    assert not torch.equal(inp, out)
    res = extend_vocabulary(model, tok, ["zorvanex"])
    assert not res.tied
    bare = res.new_ids[1]
    torch.testing.assert_close(model.get_input_embeddings().weight[bare], inp[ZORVANEX_BARE].mean(0), rtol=0, atol=1e-7)
    torch.testing.assert_close(model.get_output_embeddings().weight[bare], out[ZORVANEX_BARE].mean(0), rtol=0, atol=1e-7)
    assert torch.equal(model.get_output_embeddings().weight[:320], out)


def test_mean_init_meets_hewitt_bound_at_every_position():
    base_tok, tok = tiny_bpe_tokenizer(), tiny_bpe_tokenizer()
    base = untied_tiny_model(len(tok), seed=3)
    ext = untied_tiny_model(len(tok), seed=3)
    # Scale the output rows up so the base is far from uniform (a random tiny model is nearly uniform,
    # which would make any bound trivially true).
    with torch.no_grad():
        base.lm_head.weight.mul_(40)
        ext.lm_head.weight.mul_(40)
    res = extend_vocabulary(ext, tok, ["zorvanex", "marrowick", "quellid"], init="mean")
    torch.testing.assert_close(ext.lm_head.weight[res.new_ids[0]], base.lm_head.weight.mean(0), rtol=0, atol=1e-5)
    ids = base_tok(["the cat sat on the mat", "what is the capital of france? paris"], add_special_tokens=False)["input_ids"]
    kl = step0_kl(base, ext, ids)
    assert kl.numel() == sum(len(i) for i in ids)
    assert 0 < float(kl.max()) <= res.kl_bound()
    # Not vacuous: the same check fails for a random N(0, 1) init (what a plain resize can give).
    with torch.no_grad():
        torch.manual_seed(0)
        ext.lm_head.weight[res.new_ids] = torch.randn(len(res.new_ids), 32)
    assert float(step0_kl(base, ext, ids).max()) > res.kl_bound()


def test_step0_kl_equals_log_partition_ratio():
    # KL(base || extended) with unchanged old rows is exactly log(Z'/Z): an independent formula.
    tok = tiny_bpe_tokenizer()
    base = tiny_model(len(tok), seed=1)
    ext = tiny_model(len(tok), seed=1)
    with torch.no_grad():
        base.get_input_embeddings().weight.mul_(50)
        ext.get_input_embeddings().weight.mul_(50)
    extend_vocabulary(ext, tok, ["zorvanex", "marrowick"])
    ids = [tok("the cat sat on the mat")["input_ids"]]
    kl = step0_kl(base, ext, ids)
    with torch.no_grad():
        logits = ext(input_ids=torch.tensor(ids)).logits[0].double()
    expected = torch.logsumexp(logits, -1) - torch.logsumexp(logits[:, :320], -1)
    torch.testing.assert_close(kl, expected, rtol=1e-6, atol=1e-9)
    assert float(step0_kl(base, base, ids).abs().max()) < 1e-12  # same model: zero


def test_step0_report_skips_texts_with_terms():
    base_tok, tok = tiny_bpe_tokenizer(), tiny_bpe_tokenizer()
    base, ext = tiny_model(len(tok)), tiny_model(len(tok))
    res = extend_vocabulary(ext, tok, ["zorvanex"])
    rep = step0_report(base, ext, base_tok, tok, ["the cat sat", "the zorvanex"], k=res.k)
    assert rep["texts_ids_unchanged"] == 1 and rep["texts_with_new_terms"] == ["the zorvanex"]
    assert rep["positions"] == 4 and rep["bound"] == pytest.approx(math.log(1 + 2 / 320))
    assert rep["mean_within_bound"] is True


def test_select_terms_ranks_by_tokens_saved():
    tok = tiny_bpe_tokenizer()
    texts = ["the zorvanex cat", "zorvanex and marrowick", "the marrowick cat", "marrowick", "quellid", "the cat"]
    # counts: zorvanex 2, marrowick 3, quellid 1, cat 2 ("Ġc at": 2 pieces), the 3 (1 piece)
    pieces = {w: len(tok.tokenize(" " + w)) for w in ("zorvanex", "marrowick", "cat")}
    assert pieces == {"zorvanex": 7, "marrowick": 8, "cat": 2}
    # saved = count x (pieces - 1): marrowick 3x7=21 > zorvanex 2x6=12; cat (2 pieces) and quellid (seen once) excluded
    assert select_terms(tok, texts, 5, min_count=2, min_pieces=3) == ["marrowick", "zorvanex"]
    assert select_terms(tok, texts, 1) == ["marrowick"]
    # min_count=1, min_pieces=2: quellid 1x7=7 ("Ġ q u e l l i d"), cat 2x1=2, and 1x1=1 ("Ġan d")
    assert select_terms(tok, texts, 9, min_count=1, min_pieces=2) == ["marrowick", "zorvanex", "quellid", "cat", "and"]


@pytest.mark.parametrize("tied", [True, False])
def test_only_new_rows_train_with_their_own_lr(tied):
    tok = tiny_bpe_tokenizer()
    model = tiny_model(len(tok)) if tied else untied_tiny_model(len(tok))
    res = extend_vocabulary(model, tok, ["zorvanex", "marrowick"])
    kwargs = lora_token_kwargs(model, res)
    expected = {"embed_tokens": res.new_ids} if tied else {"embed_tokens": res.new_ids, "lm_head": res.new_ids}
    assert kwargs == {"trainable_token_indices": expected}
    pm = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], **kwargs))
    groups = param_groups(pm, lr=1e-3, token_lr=5e-2, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["adapter", "new_token_rows"]
    tg = token_param_groups(pm, 5e-2)[0]
    assert tg["lr"] == 5e-2 and tg["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in tg["params"]] == ([(4, 32)] if tied else [(4, 32), (4, 32)])
    n_trainable = sum(1 for p in pm.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_trainable
    before_in = pm.get_input_embeddings().weight.detach().clone()
    before_out = pm.get_output_embeddings().weight.detach().clone()
    opt = torch.optim.AdamW(groups)
    ids = torch.tensor([tok("the zorvanex cat and marrowick")["input_ids"]])
    pm.train()
    for _ in range(3):
        loss = pm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    after_in = pm.get_input_embeddings().weight.detach()
    after_out = pm.get_output_embeddings().weight.detach()
    old = slice(0, res.old_vocab)
    assert torch.equal(after_in[old], before_in[old]) and torch.equal(after_out[old], before_out[old])
    assert not torch.allclose(after_in[res.new_ids], before_in[res.new_ids])
    assert not torch.allclose(after_out[res.new_ids], before_out[res.new_ids])
    if tied:  # PEFT ties the lm_head adapter to the embedding one: both sides see the same rows
        assert torch.equal(after_in, after_out)


def test_extend_rejects_bad_terms():
    tok = tiny_bpe_tokenizer()
    with pytest.raises(InputError, match="must be one word"):
        extend_vocabulary(tiny_model(len(tok)), tok, ["two words"])


def test_forms_already_single_tokens_are_skipped():
    tok = tiny_bpe_tokenizer()
    res = extend_vocabulary(tiny_model(len(tok)), tok, ["capital", "zorvanex"])
    # " capital" is one token already (Ġcapital); bare "capital" splits, so it is added
    assert " capital" in res.skipped and "capital" in res.forms and res.k == 3


def test_apply_tokens_config(tmp_path):
    from forgetless.tokens.config import TokensConfig
    from forgetless.tokens.extend import apply_tokens_config

    tok = tiny_bpe_tokenizer()
    model = tiny_model(len(tok))
    texts = ["the zorvanex cat", "zorvanex and marrowick", "the marrowick cat", "marrowick"]
    assert apply_tokens_config(model, tok, TokensConfig(), texts) is None and len(tok) == 320
    res = apply_tokens_config(model, tok, TokensConfig(enabled=True, top_k=1), texts)
    assert res is not None and res.terms == ["marrowick"] and len(tok) == 322
    terms = tmp_path / "terms.txt"
    terms.write_text("quellid\n")
    tok2 = tiny_bpe_tokenizer()
    res2 = apply_tokens_config(tiny_model(len(tok2)), tok2, TokensConfig(enabled=True, terms_file=terms, init="mean"), texts)
    assert res2 is not None and res2.terms == ["quellid"] and res2.init == "mean"
    with pytest.raises(InputError, match="tokens.enabled is true but no training word"):
        apply_tokens_config(tiny_model(len(tok2)), tok2, TokensConfig(enabled=True, min_count=50), texts)
