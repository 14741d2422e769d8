"""Fertility analysis and the `forgetless tokens` CLI on tiny models (fast)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from forgetless.cli import app
from forgetless.errors import InputError
from forgetless.models import load_model, load_tokenizer
from forgetless.tokens.analyze import analyze, fertility, general_sample_path, load_texts, to_markdown, word_piece_counts
from forgetless.tokens.testing import save_tiny_bpe_model, tiny_bpe_tokenizer


def test_word_piece_counts_hand_worked():
    tok = tiny_bpe_tokenizer()
    # the | Ġ z or v an e x | Ġc at  ->  "the" 1, "zorvanex" 6 (the lone space token overlaps no word), "cat" 2
    assert word_piece_counts(tok, ["the zorvanex cat"]) == [("the", 1), ("zorvanex", 6), ("cat", 2)]
    # digits and punctuation are not words
    assert [w for w, _ in word_piece_counts(tok, ["one, 2 three!"])] == ["one", "three"]


def test_fertility_hand_worked():
    tok = tiny_bpe_tokenizer()
    f = fertility(tok, ["the zorvanex cat", "the cat sat"])
    # words: the 1, zorvanex 6, cat 2, the 1, cat 2, sat 1 -> 13 tokens / 6 words
    assert (f.words, f.tokens) == (6, 13)
    assert f.fertility == pytest.approx(13 / 6)
    assert f.share_ge2 == pytest.approx(3 / 6) and f.share_ge4 == pytest.approx(1 / 6)
    assert f.seq_tokens == 10 + 4


def test_analyze_measures_saving_and_term_fertility():
    tok = tiny_bpe_tokenizer()
    domain = ["the zorvanex cat", "zorvanex and marrowick", "the marrowick cat", "marrowick"]
    general = ["the cat sat on the mat", "what is the capital of france?"]
    rep = analyze(tok, domain, general, top_k=2)
    assert [t["term"] for t in rep["top_terms"]] == ["marrowick", "zorvanex"]
    assert rep["top_terms"][0] == {
        "term": "marrowick", "count": 3, "pieces": 8, "split": [" m", "ar", "r", "o", "w", "i", "c", "k"], "tokens_saved": 21,
    }
    w = rep["with_terms"]
    assert w["new_tokens"] == 4 and w["term_fertility_after"] == 1.0 and w["term_fertility_before"] > 5
    # measured saving equals the drop in sequence tokens, and general text is untouched
    assert w["domain_tokens_saved"] == rep["domain"]["seq_tokens"] - w["domain"]["seq_tokens"] > 0
    assert w["general"]["seq_tokens"] == rep["general"]["seq_tokens"]
    assert len(tok) == 320  # the caller's tokenizer is not modified
    md = to_markdown(rep)
    assert "| domain | 4 |" in md and "| marrowick | 3 | 8 |" in md


def test_general_sample_ships_with_package():
    texts = load_texts([general_sample_path()])
    assert len(texts) == 40 and all(t.strip() for t in texts)


def test_cli_analyze_writes_json_and_markdown(tmp_path):
    model_dir = save_tiny_bpe_model(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "the zorvanex cat"}\n{"messages": [{"role": "user", "content": "zorvanex?"}, {"role": "assistant", "content": "zorvanex and marrowick"}]}\n')
    res = CliRunner().invoke(app, ["tokens", "analyze", str(data), "--model", str(model_dir), "--out", str(tmp_path / "run"), "--top-k", "3"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "run" / "tokens" / "fertility.json").read_text())
    assert rep["domain"]["texts"] == 2 and rep["top_terms"][0]["term"] == "zorvanex"
    assert (tmp_path / "run" / "tokens" / "fertility.md").read_text().startswith("# Tokenizer fertility")
    assert "zorvanex" in res.output


def test_cli_analyze_bad_input_names_file_and_line(tmp_path):
    model_dir = save_tiny_bpe_model(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "fine"}\n{"text": 3}\n')
    res = CliRunner().invoke(app, ["tokens", "analyze", str(data), "--model", str(model_dir)])
    assert isinstance(res.exception, InputError)
    assert str(res.exception) == f"{data}:2: field 'text': must be a string, got int"


def test_cli_extend_writes_loadable_model_with_checks(tmp_path):
    model_dir = save_tiny_bpe_model(tmp_path / "m")
    terms = tmp_path / "terms.json"
    terms.write_text('["zorvanex", "marrowick"]')
    out = tmp_path / "ext"
    res = CliRunner().invoke(app, ["tokens", "extend", "--model", str(model_dir), "--terms", str(terms), "--out", str(out)])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "tokens.json").read_text())
    assert info["forms"] == [" zorvanex", "zorvanex", " marrowick", "marrowick"] and info["k"] == 4
    step0 = info["step0"]
    assert step0["texts_ids_unchanged"] == 40 and step0["bound"] == pytest.approx(math.log(1 + 4 / 320))
    gen_tokens = sum(len(i) for i in tiny_bpe_tokenizer()(load_texts([general_sample_path()]))["input_ids"])
    assert step0["positions"] == gen_tokens and 0 < step0["kl_mean"] <= step0["kl_max"]
    tok = load_tokenizer(str(out))
    assert len(tok) == 324 and tok("the zorvanex")["input_ids"][1] == info["new_ids"][0]
    assert load_model(str(out)).get_input_embeddings().weight.shape[0] == 324
    # a second run refuses to overwrite the folder
    res2 = CliRunner().invoke(app, ["tokens", "extend", "--model", str(model_dir), "--terms", str(terms), "--out", str(out)])
    assert res2.exit_code != 0 and "not empty" in str(res2.exception)
