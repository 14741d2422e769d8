"""The LM head applied only where a loss or a score needs it, in chunks.

A causal LM's last step, hidden state -> vocabulary logits, is the one tensor that grows with the
vocabulary: ``rows x length x vocab`` floats, 2.1 GB in fp32 for 8 rows of 256 tokens at Gemma's
262k vocabulary, and training keeps several such tensors alive (the upcast, log-softmax, its
gradient; the base's logits for KL). Here the transformer trunk runs once and returns hidden
states; the head then projects at most ``chunk`` positions at a time, only at positions that
carry a label. In training each chunk is checkpointed, so its logits are recomputed in the
backward pass instead of kept: peak memory holds one chunk's logits, whatever the vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK = 256  # positions per projection: 256 x 262k fp32 logits = 268 MB

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


class HiddenCapture:
    """Records the trunk's last hidden state while the *whole* model runs its own forward.

    The forward still goes through the model (and any DDP wrapper, whose hooks gradient
    synchronisation needs), asked for the last position's logits only; the loss is then taken from
    the captured hidden states by :func:`nll_sum` / :func:`kl_sum`.
    """

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.decoder = decoder
        self.hidden: torch.Tensor | None = None

    @contextlib.contextmanager
    def capturing(self) -> Any:
        """Within this block, every forward of the trunk stores its last hidden state."""

        def hook(_m: torch.nn.Module, _i: Any, out: Any) -> None:
            self.hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

        handle = self.decoder.register_forward_hook(hook)
        try:
            yield self
        finally:
            handle.remove()


def _nll_chunk(h: torch.Tensor, y: torch.Tensor, project: Project) -> torch.Tensor:
    return F.cross_entropy(project(h).float(), y, reduction="sum")


def nll_sum(hidden: torch.Tensor, labels: torch.Tensor, project: Project, *, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed next-token cross-entropy, labelled positions)``: position t predicts label t+1,
    -100 labels are skipped, as in transformers' causal-LM loss."""
    mask = labels[:, 1:] != -100
    h, y = hidden[:, :-1][mask], labels[:, 1:][mask]
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, len(y), chunk):
        total = total + checkpoint(_nll_chunk, h[s : s + chunk], y[s : s + chunk], project, use_reentrant=False)
    return total, mask.sum()


def _kl_chunk(ht: torch.Tensor, hb: torch.Tensor, project: Project, base_project: Project, base_ctx: Callable[[], Any]) -> torch.Tensor:
    q = F.log_softmax(project(ht).float(), dim=-1)
    with torch.no_grad(), base_ctx():
        p = F.log_softmax(base_project(hb).float(), dim=-1)
    return (p.exp() * (p - q)).sum()


def kl_sum(
    tuned_hidden: torch.Tensor,
    base_hidden: torch.Tensor,
    mask: torch.Tensor,
    project: Project,
    *,
    base_project: Project | None = None,
    base_ctx: Callable[[], Any] = contextlib.nullcontext,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of KL(base || tuned) over positions where mask is set, their number)``.

    ``base_project`` (default: ``project``) runs under ``base_ctx()`` (e.g. the adapter switched
    off, for an adapted or extended LM head). The base's logits are recomputed per chunk in the
    backward pass rather than stored for every position.
    """
    ht, hb = tuned_hidden[mask], base_hidden[mask].detach()
    total = tuned_hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, len(ht), chunk):
        total = total + checkpoint(_kl_chunk, ht[s : s + chunk], hb[s : s + chunk], project, base_project or project, base_ctx, use_reentrant=False)
    return total, mask.sum().to(total.dtype)
