"""Exports of an extended-vocabulary model: extended base + plain adapter, and merged (tiny models, fast)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from forgetless.testing import tiny_model
from forgetless.tokens.export import export_extended, export_info, load_exported
from forgetless.tokens.extend import extend_vocabulary, lora_token_kwargs, token_parameters
from forgetless.tokens.testing import tiny_bpe_tokenizer


def _untied(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def _trained_peft(tied: bool):
    """A peft model whose LoRA weights and new rows are all non-zero (as after training)."""
    tok = tiny_bpe_tokenizer()
    model = tiny_model(len(tok)) if tied else _untied(len(tok))
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    res = extend_vocabulary(model, tok, ["zorvanex", "marrowick"])
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False,
                     **lora_token_kwargs(model, res))
    pm = get_peft_model(model, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in token_parameters(pm):
            p.add_(0.5 * torch.randn_like(p))
    pm.eval()
    return pm, tok, res, base_state


@pytest.mark.parametrize("tied", [True, False])
def test_export_loads_with_vanilla_peft_and_matches_logits(tmp_path, tied):
    pm, tok, res, base_state = _trained_peft(tied)
    ids = torch.tensor([tok("zorvanex cat and marrowick sat (marrowick) the zorvanex")["input_ids"]])
    assert set(res.new_ids) <= set(ids[0].tolist())
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
    info = export_extended(pm, tok, tmp_path / "export")
    out = tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter", "export.json", "extended_base", "merged"]
    assert export_info(out) == info and info["extended_base"]["vocab_size"] == 324
    for which in ("adapter", "merged"):
        m = load_exported(out, which=which)
        with torch.no_grad():
            got = m(input_ids=ids).logits
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    # the in-process model is untouched by the export
    with torch.no_grad():
        torch.testing.assert_close(pm(input_ids=ids).logits, ref, rtol=0, atol=0)


def test_extended_base_is_the_base_plus_trained_rows_only(tmp_path):
    pm, tok, res, base_state = _trained_peft(tied=False)
    export_extended(pm, tok, tmp_path / "export", merged=False)
    ext = AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "extended_base")
    state = ext.state_dict()
    assert set(state) == set(base_state)
    deltas = {id(p): p for p in token_parameters(pm)}
    trained_rows = [p.detach() for p in deltas.values()]
    for name, before in base_state.items():
        after = state[name]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(after[:320], before)  # old rows bit-identical
            assert any(torch.equal(after[res.new_ids], rows) for rows in trained_rows)  # trained rows baked in
        else:
            assert torch.equal(after, before), name  # every other weight bit-identical
    assert not (tmp_path / "export" / "merged").exists()


def test_plain_adapter_has_no_embedding_deltas(tmp_path):
    pm, tok, _, _ = _trained_peft(tied=True)
    export_extended(pm, tok, tmp_path / "export", merged=False)
    adapter = tmp_path / "export" / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["trainable_token_indices"] is None and cfg["modules_to_save"] is None
    assert cfg["base_model_name_or_path"] == str((tmp_path / "export" / "extended_base").resolve())
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert "vllm serve" in (tmp_path / "export" / "README.md").read_text()


def test_export_replaces_existing_folder_atomically(tmp_path):
    pm, tok, _, _ = _trained_peft(tied=True)
    out = tmp_path / "export"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export_extended(pm, tok, out, merged=False)
    assert not (out / "stale.txt").exists() and (out / "extended_base" / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temp folders left behind
