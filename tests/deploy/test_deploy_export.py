"""GGUF export on a tiny run folder: written, read back by transformers, logits close, gated."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from forgetless import artifacts
from forgetless.cli import app
from forgetless.deploy import export as export_mod
from forgetless.deploy.export import check_gguf_gate, export_gguf, gguf_info_path, gguf_path
from forgetless.deploy.gguf_export import _permute, gguf_tensor_name, load_gguf, write_gguf
from forgetless.deploy.variants import load_target_tokenizer, load_variant, resolve_target
from forgetless.errors import ForgetlessError
from forgetless.registry import Registry
from forgetless.registry.sample_run import make_run_folder
from forgetless.testing import tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(artifacts.CACHE_ENV, str(tmp_path / "cache"))


def test_permute_interleaves_rotary_halves() -> None:
    # One head of 4 rows [a0 a1 | b0 b1] (two rotary halves) becomes [a0 b0 a1 b1] (llama.cpp's layout).
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert _permute(w, 1).tolist() == [[0, 1], [4, 5], [2, 3], [6, 7]]
    assert gguf_tensor_name("model.layers.3.self_attn.k_proj.weight") == "blk.3.attn_k.weight"
    assert gguf_tensor_name("model.embed_tokens.weight") == "token_embd.weight"
    with pytest.raises(ForgetlessError, match="no llama.cpp tensor"):
        gguf_tensor_name("model.layers.0.self_attn.q_proj.bias")


def test_word_level_tokenizer_is_refused_clearly(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    with pytest.raises(ForgetlessError, match="byte-level BPE"):
        write_gguf(tiny_model(len(tok)), tok, tmp_path / "m.gguf", "f16", name="tiny")
    assert not (tmp_path / "m.gguf").exists()


def test_export_round_trip_and_gate(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run", bpe=True)
    info = export_gguf(run, ["f16", "q8_0", "q4_0"])
    t = resolve_target(str(run))
    tok = load_target_tokenizer(t)
    merged = load_variant(t, "merged", tok=tok)
    text = "zorvanex treats marrowick syndrome"
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        ref = merged(ids).logits
    # Expected error per file type: f16 rounds weights at ~1e-3 relative; q8_0 and q4_0 quantize
    # blocks of 32 to 8 and 4 bits. Logits of this model are O(0.5).
    for ft, atol in (("f16", 2e-3), ("q8_0", 2e-2), ("q4_0", 0.2)):
        p = gguf_path(run, ft)
        assert p.exists() and info["files"][ft]["bytes"] == p.stat().st_size
        model, gtok = load_gguf(p)
        assert gtok.encode(text) == ids[0].tolist()  # the tokenizer survives the file
        assert gtok.chat_template == tok.chat_template and gtok.eos_token_id == tok.eos_token_id
        with torch.no_grad():
            got = model(ids).logits
        assert got.shape == ref.shape
        err = (got - ref).abs().max().item()
        assert err < atol, (ft, err)
    # f16 and q8_0 stay within the gate on this model; every file's verdict is recorded.
    assert info["files"]["f16"]["verdict"] == "pass" and info["files"]["q8_0"]["verdict"] == "pass"
    assert abs(info["files"]["f16"]["general"]["kl_increase"]) < 1e-3
    assert check_gguf_gate(run, "q8_0")["verdict"] == "pass"
    reg = Registry(tmp_path / "r.sqlite")
    v, _ = reg.register(run, "m", variant="gguf-q8_0")
    assert v.kind == "gguf-q8_0" and v.gate_pass and v.artifact == str(gguf_path(run.resolve(), "q8_0"))
    assert reg.promote(v.ref, "prod").ref == v.ref
    # A file changed after its gate ran is not trusted.
    with open(gguf_path(run, "f16"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(ForgetlessError, match="changed since its gate ran"):
        check_gguf_gate(run, "f16")
    assert not reg.register(run, "m", variant="gguf-f16")[0].gate_pass


def test_gate_refuses_a_broken_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run_folder(tmp_path / "run", bpe=True)

    def broken_writer(model, tok, path, ftype, **kw):  # type: ignore[no-untyped-def]
        # A deliberately broken export: the (tied) embedding rows shuffled and scaled up, as a
        # wrong tensor layout would do; the random tiny model's near-uniform outputs become sharp.
        bad = copy.deepcopy(model)
        torch.manual_seed(0)
        with torch.no_grad():
            emb = bad.get_input_embeddings().weight
            emb.copy_(emb[torch.randperm(emb.shape[0])] * 20)
        return write_gguf(bad, tok, path, ftype, **kw)

    monkeypatch.setattr(export_mod, "write_gguf", broken_writer)
    r = CliRunner().invoke(app, ["export", str(run), "--format", "gguf", "--types", "q8_0"])
    assert r.exit_code != 0
    info = json.loads(gguf_info_path(run).read_text())
    entry = info["files"]["q8_0"]
    assert entry["verdict"] == "refused" and any("KL to base rose" in x for x in entry["reasons"])
    with pytest.raises(ForgetlessError, match="refused by the quality gate"):
        check_gguf_gate(run, "q8_0")
    reg = Registry(tmp_path / "r.sqlite")
    v, _ = reg.register(run, "m", variant="gguf-q8_0")
    with pytest.raises(ForgetlessError, match="gguf-q8_0 quality gate failed"):
        reg.promote(v.ref, "prod")


def test_unknown_type_and_format_rejected(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run", bpe=True)
    with pytest.raises(ForgetlessError, match="unknown GGUF type 'q3'"):
        export_gguf(run, ["q3"])
    r = CliRunner().invoke(app, ["export", str(run), "--format", "onnx"])
    assert r.exit_code != 0 and "unknown format" in str(r.exception or r.output)
