"""Write a run's merged model as GGUF (llama.cpp / Ollama), with its tokenizer and chat template.

The layout follows llama.cpp's ``convert_hf_to_gguf.py`` for the Llama architecture:

* tensor names from gguf's ``TensorNameMap`` spelling (``token_embd``, ``blk.N.attn_q``, ...);
* the query and key projections permuted into llama.cpp's rotary layout (``_permute``), the
  inverse of what transformers undoes when it reads a GGUF;
* a tied LM head is not written (llama.cpp reuses ``token_embd`` when ``output`` is absent);
* 1-D tensors (norms) stay F32 in every file type, as llama.cpp's converter keeps them;
* the tokenizer as ``gpt2`` (byte-level BPE): every token string by id, its type (control for
  special tokens, user-defined for added vocabulary such as a tokens-stage extension), the
  merges, the special ids and the chat template.

File types: ``f16``; ``q8_0`` (every matrix Q8_0); ``q4_0`` (Q4_0 matrices, token embedding in
Q8_0: llama.cpp keeps the embedding / tied head at 6-8 bits in its Q4 mixes, and the ``gguf``
package can write Q8_0 but not Q6_K). Rows whose length is not a multiple of the 32-wide block
fall back to F16.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ForgetlessError

GGUF_TYPES = ("f16", "q8_0", "q4_0")

# HF Llama parameter name (after "model.layers.N.") -> GGUF tensor name (after "blk.N.").
_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_MAP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for a q/k projection: each head's two rotary halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensor_name(hf_name: str) -> str:
    """The GGUF name of a Llama parameter; raises :class:`ForgetlessError` for one llama.cpp has no slot for."""
    if hf_name in _TOP_MAP:
        return _TOP_MAP[hf_name]
    m = _LAYER_RE.match(hf_name)
    if m and m.group(2) in _LAYER_MAP:
        return f"blk.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    raise ForgetlessError(f"GGUF export: no llama.cpp tensor for parameter '{hf_name}' (biases and non-Llama layers are not supported)")


def _tensor_type(gguf_name: str, shape: tuple[int, ...], ftype: str) -> Any:
    from gguf import GGMLQuantizationType as Q

    if len(shape) == 1:
        return Q.F32
    if ftype == "f16" or shape[-1] % 32:
        return Q.F16
    if ftype == "q8_0" or gguf_name in ("token_embd.weight", "output.weight"):
        return Q.Q8_0
    return Q.Q4_0


def _source_pre(base_dir: str) -> str:
    """llama.cpp's pre-tokenizer name: copied from the GGUF the base was converted from, else ``default``."""
    src = Path(base_dir) / "forgetless_source.json"
    if src.exists():
        from gguf import GGUFReader

        info = json.loads(src.read_text())
        field = GGUFReader(Path(info["package_dir"]) / info["gguf_file"]).fields.get("tokenizer.ggml.pre")
        if field is not None:
            return str(field.contents())
    # llama.cpp recognises a base's pre-tokenizer by hashing its output on a test text; without that
    # table, "default" (the GPT-2 split) is what llama.cpp falls back to.
    return "default"


def _tokenizer_fields(tok: Any, n_vocab: int) -> dict[str, Any]:
    """Token strings, types and merges of a byte-level BPE tokenizer, padded to ``n_vocab`` rows."""
    from gguf import TokenType

    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ForgetlessError(f"GGUF export supports byte-level BPE tokenizers (llama.cpp 'gpt2'); this one is {model.get('type')!r}")
    n_tok = len(tok)
    if n_tok > n_vocab:
        raise ForgetlessError(f"GGUF export: the tokenizer has {n_tok} tokens but the embedding only {n_vocab} rows")
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i, t in enumerate(tok.convert_ids_to_tokens(list(range(n_tok)))):
        tokens.append(t)
        if i in added:
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
    for i in range(n_tok, n_vocab):  # embedding rows without a token (padding to a round size)
        tokens.append(f"[PAD{i}]")
        types.append(TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"tokens": tokens, "types": types, "merges": merges}


def write_gguf(model: torch.nn.Module, tok: Any, path: str | Path, ftype: str, *, name: str, pre: str = "default") -> Path:
    """Write an fp32 Llama ``model`` and its tokenizer as one GGUF file of ``ftype`` (atomically)."""
    import gguf

    if ftype not in GGUF_TYPES:
        raise ForgetlessError(f"unknown GGUF type '{ftype}' (choose from {', '.join(GGUF_TYPES)})")
    cfg = model.config
    if cfg.model_type != "llama":
        raise ForgetlessError(f"GGUF export supports the Llama architecture; this model is '{cfg.model_type}'")
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ForgetlessError(f"GGUF export: rope type {rope.get('rope_type')!r} is not supported (only the default rotary embedding)")
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    if tied:
        sd.pop("lm_head.weight", None)
    n_vocab = sd["model.embed_tokens.weight"].shape[0]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(n_vocab)
    w.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[ftype])

    tf = _tokenizer_fields(tok, n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tf["tokens"])
    w.add_token_types(tf["types"])
    w.add_token_merges(tf["merges"])
    for key, adder in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
        tid = getattr(tok, f"{key}_token_id", None)
        if tid is not None:
            adder(int(tid))
    w.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))
    w.add_add_space_prefix(False)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    for hf_name, arr in sd.items():
        gname = gguf_tensor_name(hf_name)
        if hf_name.endswith("q_proj.weight"):
            arr = _permute(arr, n_head)
        elif hf_name.endswith("k_proj.weight"):
            arr = _permute(arr, n_kv)
        qtype = _tensor_type(gname, arr.shape, ftype)
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, np.ascontiguousarray(arr, dtype=np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(gname, np.ascontiguousarray(arr, dtype=np.float16))
        else:
            w.add_tensor(gname, gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), qtype), raw_dtype=qtype)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_gguf(path: str | Path) -> tuple[Any, Any]:
    """Read a GGUF file back with transformers (weights dequantized to fp32) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized; its tensors are plain fp32 already.
    model.eval()
    return model, tok
