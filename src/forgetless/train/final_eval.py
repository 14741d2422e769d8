"""The selected checkpoint, scored once on what the loop does not score: the full domain sets
(the loop scores a fixed subset) and the held-out general prompts with long answers.

The pipeline's steps call :func:`heldout_base_reference` (on the base, before training),
:func:`evaluate_selection` (after export) and :func:`report_sections` (report.md).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from peft.helpers import rescale_adapter_scale
from safetensors.torch import load_file

from rich.console import Console

from .. import artifacts as A
from ..adapter import is_peft
from ..config import RunConfig
from ..evaluate.domain import DomainData
from ..evaluate.drift import GeneralReference
from ..evaluate.heldout import heldout_drift, heldout_reference
from ..evaluate.precision import resolve as resolve_precision
from ..evaluate.runner import Evaluator
from .budget import Selection
from .calibrate import load_adapter_weights
from .kl_control import kl_control_section


def heldout_base_reference(
    cfg: RunConfig, model: torch.nn.Module, tok: Any, *, base_fingerprint: str, tokenizer_fingerprint: str, device: str, console: Console,
) -> GeneralReference | None:  # fmt: skip
    """The base's answers to the held-out general prompts (cached); None when
    ``eval.heldout_general`` is 'none'. Runs on the base, before any training touches it."""
    if cfg.eval.heldout_general == "none":
        return None
    with console.status("held-out general prompts: base answers (cached after the first run)"):
        return heldout_reference(
            model, tok, cfg.eval.heldout_general, max_new_tokens=cfg.eval.heldout_max_new_tokens, base_fingerprint=base_fingerprint,
            tokenizer_fingerprint=tokenizer_fingerprint, topk=cfg.eval.kl_topk, batch_size=cfg.eval.batch_size,
            system_prompt=cfg.data.system_prompt, precision=resolve_precision(cfg.eval.precision, device),
        )  # fmt: skip


def load_checkpoint_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Put a checkpoint's trained weights into ``model`` in place (adapter, or every weight)."""
    if is_peft(model):
        load_adapter_weights(model, checkpoint)
    else:
        # Tied embeddings are saved once: the missing lm_head key is the same tensor.
        model.load_state_dict(load_file(str(checkpoint / "model.safetensors")), strict=False)


def evaluate_selected(
    model: torch.nn.Module, evaluator: Evaluator, full_domain: DomainData, checkpoint: Path, *, scale: float = 1.0,
    heldout: GeneralReference | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Full domain sets and held-out general drift of ``checkpoint`` at adapter ``scale``.

    Returns ``{"domain": {...}, "heldout_general": {...}}``: the domain scores with their n and 95%
    interval; the held-out KL per token and per prompt (see :mod:`forgetless.evaluate.heldout`).
    """
    load_checkpoint_weights(model, checkpoint)
    ctx = rescale_adapter_scale(model, scale) if is_peft(model) and scale != 1.0 else contextlib.nullcontext()
    out: dict[str, Any] = {"checkpoint": checkpoint.name, "scale": scale}
    with ctx:
        if not full_domain.empty:
            out["domain"] = evaluator.evaluate_domain(model, full_domain)
        if heldout is not None:
            pad = evaluator.tok.pad_token_id or 0
            d = heldout_drift(model, heldout, batch_size=evaluator.batch_size, pad_id=pad, precision=evaluator.precision)
            out["heldout_general"] = d.to_metrics()
    return out


def selected_eval_section(selected_eval: dict[str, Any] | None) -> str | None:
    """report.md section: the selected checkpoint on the full domain sets and held-out prompts."""
    if not selected_eval:
        return None
    lines = [f"## Selected checkpoint ({selected_eval['checkpoint']}, adapter scale {selected_eval['scale']}) on what the loop does not score", ""]
    dom = selected_eval.get("domain") or {}
    keys = [k for k in ("domain/qa_recall", "domain/qa_f1", "domain/mc_acc") if k in dom]
    if keys:
        lines += ["Full domain sets (the loop scores a fixed subset of at most `eval.domain_limit` items per set):", ""]
        lines += ["| metric | value | 95% interval | n |", "|---|---|---|---|"]
        lines += [f"| {k} | {dom[k]:.3f} | [{dom[k + '_lo']:.3f}, {dom[k + '_hi']:.3f}] | {dom[k + '_n']} |" for k in keys]
        lines.append("")
    held = selected_eval.get("heldout_general")
    if held:
        after = held.get("heldout/kl_per_token_after48")
        lines += [
            f"Held-out general prompts ({held['heldout/prompts']} prompts never used in the loop, {held['heldout/tokens']} answer tokens), KL(base || tuned) in nats:",
            "",
            f"- per token (every answer token weighs the same, as the in-loop general KL): {held['heldout/kl_per_token']:.4f}",
            f"- per prompt (mean of each prompt's token mean): {held['heldout/kl_per_prompt']:.4f} [95%: {held['heldout/kl_per_prompt_lo']:.4f}, {held['heldout/kl_per_prompt_hi']:.4f}]",
            f"- per token along the answer: first 48 tokens {held['heldout/kl_per_token_first48']:.4f}, after"
            + (f" {after:.4f} ({held['heldout/tokens_after48']} tokens)" if after is not None else ": no answer is longer"),
        ]
    return "\n".join(lines)


def evaluate_selection(
    cfg: RunConfig, model: torch.nn.Module, evaluator: Evaluator, full_domain: DomainData, sel: Selection,
    heldout: GeneralReference | None, console: Console,
) -> dict[str, Any] | None:  # fmt: skip
    """:func:`evaluate_selected` on the run's selected checkpoint at its scale; None when the base was kept."""
    if sel.step is None:
        return None
    with console.status("scoring the selected checkpoint on the full domain sets" + (" and the held-out general prompts" if heldout else "")):
        ckpt = cfg.run_dir / A.CHECKPOINTS_DIR / f"checkpoint-{sel.step}"
        return evaluate_selected(model, evaluator, full_domain, ckpt, scale=sel.scale, heldout=heldout)


def report_sections(selected_eval: dict[str, Any] | None, history: list[dict[str, Any]]) -> list[str]:
    """The report.md sections this module and the KL controller add (those with something to say)."""
    return [s for s in (selected_eval_section(selected_eval), kl_control_section(history)) if s]
