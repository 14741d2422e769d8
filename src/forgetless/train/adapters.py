"""Attach a PEFT adapter (LoRA, DoRA, rsLoRA) to a frozen base, or unfreeze everything for the
full fine-tuning baseline."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel

from ..adapter import peft_wrapping
from ..errors import ForgetlessError
from .config import TARGET_PRESETS, LoraSettings


def present_modules(model: torch.nn.Module, names: list[str]) -> list[str]:
    """The subset of ``names`` that match a Linear module's last name component in ``model``."""
    found = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return [n for n in names if n in found]


def attach_adapter(model: PreTrainedModel, cfg: LoraSettings, **extra: object) -> torch.nn.Module:
    """Wrap ``model`` for training according to ``cfg.mode``.

    ``lora``: a PEFT model whose only trainable parameters are the adapter's (plus anything in
    ``extra``, e.g. ``trainable_token_indices`` from the tokens stage). ``full``: the model itself
    with every parameter trainable.
    """
    if cfg.mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    names = [t for name in cfg.target_modules for t in TARGET_PRESETS.get(name, [name])]
    targets = present_modules(model, names)
    if not targets:
        raise ForgetlessError(
            f"lora.target_modules {cfg.target_modules} match no Linear layer of this model; "
            f"available: {sorted({n.rsplit('.', 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})}"
        )
    lcfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
        **extra,  # type: ignore[arg-type]
    )
    with peft_wrapping():
        return get_peft_model(model, lcfg)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
