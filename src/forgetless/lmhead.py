"""A causal LM split into its trunk and its LM head, so the head is applied only where a score needs it.

A causal LM's last step, hidden state -> vocabulary logits, is the one tensor that grows with the
vocabulary: ``rows x length x vocab`` floats, 2.1 GB in fp32 for 8 rows of 256 tokens at Gemma's
262k vocabulary. Callers run the trunk once for hidden states and project only the positions they
score (the evaluation scorer, the router).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Project = Callable[[torch.Tensor], torch.Tensor]


def lm_split(model: torch.nn.Module) -> tuple[torch.nn.Module, Project] | None:
    """``(decoder, project)`` of a causal LM: the transformer trunk that returns hidden states, and
    the LM head (with the model's final logit soft-capping, if any) that turns them into logits.

    Works through a PEFT wrapper. None for a model not laid out as ``<ForCausalLM>.model`` +
    ``.lm_head`` (callers then use the model's own forward).
    """
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = getattr(lm, "model", None), getattr(lm, "lm_head", None)
    if not isinstance(decoder, torch.nn.Module) or not isinstance(head, torch.nn.Module):
        return None
    cap = getattr(getattr(lm, "config", None), "final_logit_softcapping", None)

    def project(hidden: torch.Tensor) -> torch.Tensor:
        logits = head(hidden)
        return torch.tanh(logits / cap) * cap if cap else logits

    return decoder, project


def kl_per_position(base_logits: torch.Tensor, tuned_logits: torch.Tensor) -> torch.Tensor:
    """KL(base || tuned) at each position, from logits ``[..., V]`` (computed in fp32)."""
    p = torch.log_softmax(base_logits.float(), dim=-1)
    q = torch.log_softmax(tuned_logits.float(), dim=-1)
    return (p.exp() * (p - q)).sum(-1)


def final_hidden(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The hidden states the LM head reads (after the final norm), ``[B, T, H]``, from the model's
    own forward (so a DDP or PEFT wrapper sees its usual call) with logits for one position only."""
    out = model(**{**inputs, "logits_to_keep": 1, "output_hidden_states": True, "use_cache": False})
    return out.hidden_states[-1]


def _checkpointed_sum(fn: Callable[..., torch.Tensor], tensors: tuple[torch.Tensor, ...], chunk: int) -> torch.Tensor:
    """``sum(fn(*chunk_of_rows))`` over row chunks, each under activation checkpointing: only one
    chunk's logits exist at a time, in the forward and again when the backward recomputes them."""
    from torch.utils.checkpoint import checkpoint

    n = tensors[0].shape[0]
    total = tensors[0].new_zeros((), dtype=torch.float32)
    for s in range(0, n, chunk):
        part = tuple(t[s : s + chunk] for t in tensors)
        total = total + (checkpoint(fn, *part, use_reentrant=False) if torch.is_grad_enabled() else fn(*part))
    return total


def chunked_ce_sum(project: Project, hidden: torch.Tensor, targets: torch.Tensor, *, chunk: int = 256) -> torch.Tensor:
    """Summed cross-entropy of ``targets`` ``[N]`` under the logits of ``hidden`` ``[N, H]``,
    ``chunk`` positions at a time (never ``N x vocab`` logits at once)."""

    def ce(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(project(h).float(), t, reduction="sum")

    return _checkpointed_sum(ce, (hidden, targets), chunk)


def chunked_kl_sum(base_project: Project, tuned_project: Project, base_hidden: torch.Tensor, tuned_hidden: torch.Tensor, *, chunk: int = 256) -> torch.Tensor:
    """Summed KL(base || tuned) over positions, from both models' hidden states ``[N, H]`` (the
    base's without gradients) and LM heads (the same head for an adapter on a frozen base),
    ``chunk`` positions at a time."""

    def kl(b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            base_logits = base_project(b)
        return kl_per_position(base_logits, tuned_project(t)).sum()

    return _checkpointed_sum(kl, (base_hidden, tuned_hidden), chunk)
