"""Export a model trained with new token rows in the two shapes servers accept.

Serving engines refuse adapters that carry embedding deltas (vLLM rejects ``modules_to_save`` and
trainable-token weights: vllm#9280, vllm#36501), so the trained rows cannot travel in the adapter.
They go into the base instead:

* ``extended_base/`` + ``adapter/``: the base model with the vocabulary resized and the trained rows
  baked in, every other weight bit-identical to the original base, plus a plain LoRA adapter
  (no embedding deltas, no ``modules_to_save``, no ``trainable_token_indices``) on top. Any server
  that takes a base + LoRA (vLLM ``--enable-lora``, TGI, HF+PEFT) serves this, and several
  adapters can share the extended base.
* ``merged/``: one ordinary model folder with the adapter and the rows merged in.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict
from peft.utils.other import TrainableTokensWrapper
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

from ..artifacts import TOKENS_EXPORT_INFO as EXPORT_INFO
from ..artifacts import TOKENS_EXPORT_README as EXPORT_README
from ..artifacts import TOKENS_EXTENDED_BASE_DIR as EXTENDED_BASE_DIR
from ..artifacts import TOKENS_MERGED_DIR as MERGED_DIR
from ..artifacts import TOKENS_PLAIN_ADAPTER_DIR as PLAIN_ADAPTER_DIR
from ..io import atomic_write_json, atomic_write_text


def _bake_token_rows(model: PeftModel) -> None:
    """Write each trained new row into the wrapped embedding matrix (tied lm_head shares it)."""
    for module in model.modules():
        if isinstance(module, TrainableTokensWrapper):
            module.token_adapter.merge()


def save_plain_adapter(peft_model: PeftModel, out_dir: str | Path, *, base_path: str) -> list[str]:
    """Save the LoRA weights only (no token deltas) in standard PEFT layout; returns the saved tensor names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = peft_model.active_adapter
    state = get_peft_model_state_dict(peft_model, adapter_name=name, save_embedding_layers=False)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items() if "trainable_tokens" not in k}
    cfg = copy.deepcopy(peft_model.peft_config[name])
    cfg.trainable_token_indices = None
    cfg.modules_to_save = None
    cfg.base_model_name_or_path = base_path
    cfg.inference_mode = True
    save_file(state, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(str(out_dir))
    return sorted(state)


def export_extended(
    peft_model: PeftModel,
    tok: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    merged: bool = True,
    extra_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``extended_base/`` + ``adapter/`` (and ``merged/``) under ``out_dir``; return what was written.

    ``peft_model`` is left untouched: the rows are baked into a copy (the copy doubles memory for the
    duration; fine for the small models forgetless targets on CPU). ``export.json`` and ``README.md``
    describe which folder is which. An existing ``out_dir`` is replaced as a whole.
    """
    final = Path(out_dir).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    # Everything is written into a temporary sibling folder and renamed into place at the end, so a
    # crash never leaves a half-written export that looks complete.
    out_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        info = _write_export(peft_model, tok, out_dir, final, merged=merged, extra_info=extra_info)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(out_dir, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(out_dir, final)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return info


def _write_export(
    peft_model: PeftModel,
    tok: PreTrainedTokenizerBase,
    out_dir: Path,
    final: Path,
    *,
    merged: bool,
    extra_info: dict[str, Any] | None,
) -> dict[str, Any]:
    base_dir = out_dir / EXTENDED_BASE_DIR
    adapter_dir = out_dir / PLAIN_ADAPTER_DIR
    merged_dir = out_dir / MERGED_DIR

    # The adapter names the extended base where it will live after the rename.
    tensors = save_plain_adapter(peft_model, adapter_dir, base_path=str(final / EXTENDED_BASE_DIR))

    work = copy.deepcopy(peft_model)
    _bake_token_rows(work)
    # unload() removes the LoRA layers WITHOUT merging them and returns the bare base module.
    base = work.unload()
    base.save_pretrained(base_dir, safe_serialization=True)
    tok.save_pretrained(base_dir)
    del base, work

    if merged:
        work = copy.deepcopy(peft_model)
        full = work.merge_and_unload()  # merges LoRA and token rows
        full.save_pretrained(merged_dir, safe_serialization=True)
        tok.save_pretrained(merged_dir)
        del full, work

    emb = peft_model.get_base_model().get_input_embeddings()
    info: dict[str, Any] = {
        "extended_base": {
            "path": EXTENDED_BASE_DIR,
            "what": "base model with the vocabulary resized and the trained new-token rows baked in; every other weight identical to the original base",
            "vocab_size": int(emb.weight.shape[0]),
        },
        "adapter": {
            "path": PLAIN_ADAPTER_DIR,
            "what": "plain LoRA adapter for extended_base (no embedding deltas, no modules_to_save)",
            "base_model_name_or_path": str(final / EXTENDED_BASE_DIR),
            "tensors": len(tensors),
        },
        "merged": {"path": MERGED_DIR, "what": "adapter and new rows merged into one ordinary model"} if merged else None,
        **(extra_info or {}),
    }
    atomic_write_json(out_dir / EXPORT_INFO, info)
    atomic_write_text(out_dir / EXPORT_README, _readme(merged))
    return info


def _readme(merged: bool) -> str:
    text = f"""# Extended-vocabulary export

This model was fine-tuned with new domain tokens. Servers refuse adapters that carry embedding
rows, so the export comes in shapes they accept:

| folder | what it is | serve it with |
|---|---|---|
| `{EXTENDED_BASE_DIR}/` | base model + tokenizer with the new tokens; the trained new rows are baked in, all other weights identical to the original base | the base of the adapter below |
| `{PLAIN_ADAPTER_DIR}/` | plain LoRA adapter (standard PEFT layout, no embedding deltas) | on top of `{EXTENDED_BASE_DIR}/` only |
"""
    if merged:
        text += f"| `{MERGED_DIR}/` | adapter and new rows merged into one model folder | on its own, like any model |\n"
    text += f"""
The adapter does not work on the original base: its tokenizer lacks the new tokens.

## vLLM

```bash
vllm serve ./{EXTENDED_BASE_DIR} --enable-lora --lora-modules domain=./{PLAIN_ADAPTER_DIR}
"""
    if merged:
        text += f"vllm serve ./{MERGED_DIR}   # or: the merged model alone\n"
    text += f"""```

## transformers + PEFT

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

tok = AutoTokenizer.from_pretrained("{EXTENDED_BASE_DIR}")
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{EXTENDED_BASE_DIR}"), "{PLAIN_ADAPTER_DIR}")
```
"""
    return text


def load_exported(out_dir: str | Path, *, which: str = "adapter", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Load an export with vanilla transformers + PEFT: ``which="adapter"`` (extended base + adapter) or ``"merged"``."""
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    if which == "merged":
        return AutoModelForCausalLM.from_pretrained(out_dir / MERGED_DIR, dtype=dtype, use_safetensors=True).eval()
    base = AutoModelForCausalLM.from_pretrained(out_dir / EXTENDED_BASE_DIR, dtype=dtype, use_safetensors=True)
    return PeftModel.from_pretrained(base, str(out_dir / PLAIN_ADAPTER_DIR)).eval()


def export_info(out_dir: str | Path) -> dict[str, Any]:
    """Read an export's ``export.json``."""
    return json.loads((Path(out_dir) / EXPORT_INFO).read_text())
