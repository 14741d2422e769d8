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
