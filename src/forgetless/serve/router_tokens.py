"""Token-level novelty: the router part that tells the domain from its neighbouring specialties.

A Gaussian on mean-pooled hidden states (``mahalanobis``) separates the domain from everyday chat
well, but a question from a neighbouring specialty has the domain's shape ("what is the dose of
X for ...", invented names, units) and lands *closer* to the domain's mean than the domain's own
held-out questions do (measured on the sample domain: AUROC 0.41 for veterinary questions against
held-out pharmacology questions, 35-40 of 48 routed to the adapter). What differs is the content:
its names and terms never occur in the domain's texts.

So each user token's hidden state (at the router's layer, of the base model) is compared with
every token state of the domain texts (cosine after standardising each dimension on the domain
tokens); a token's novelty is ``1 - max similarity``, and a prompt's is a high quantile of its
tokens' novelties (most tokens of a domain question were seen in some domain text; a neighbouring
question has several never-seen ones). The quantile, not the maximum, so one unusual word in a
domain question does not send it away.

Threshold: the domain's own novelties cannot set it (the training texts repeat templates, so even
leave-one-out every domain token finds a near twin), so it is placed at a low quantile of the
calibration general prompts' novelties: only prompts that look at least as familiar as the most
domain-like tenth of everyday chat pass. General prompts that slip under it are caught by the
Mahalanobis part (a prompt goes to the base when either part says so).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .prompts import EncodedPrompt

# Quantile of a prompt's token novelties that makes its score (see the module docstring).
DEFAULT_TOKEN_QUANTILE = 0.9
# Threshold = this quantile of the calibration general prompts' scores.
DEFAULT_GENERAL_QUANTILE = 0.1


@torch.no_grad()
def token_states(model: torch.nn.Module, prompts: Sequence[EncodedPrompt], *, layer: int, batch_size: int = 16,
                 pad_id: int = 0) -> list[np.ndarray]:  # fmt: skip
    """Hidden state ``layer`` at each prompt's user positions: one ``[n_user_tokens, hidden]`` float32 array per prompt."""
    from .router import _batches, _pad, hidden_state_at

    dev = next(model.parameters()).device
    out: list[np.ndarray] = [np.zeros((0, 0), dtype=np.float32)] * len(prompts)
    for idx in _batches(prompts, batch_size):
        ids, mask = _pad(prompts, idx, pad_id)
        hs = hidden_state_at(model, ids.to(dev), mask.to(dev), layer).float()
        for row, i in enumerate(idx):
            out[i] = hs[row, prompts[i].user_positions].cpu().numpy().astype(np.float32)
    return out


class TokenBank:
    """The domain's token states, standardised and unit-normed, and how to score novelty against them."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, bank: np.ndarray, owner: np.ndarray | None = None) -> None:
        self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)
        self.bank = bank.astype(np.float32)
        self.owner = owner

    @classmethod
    def fit(cls, states: Sequence[np.ndarray]) -> TokenBank:
        """Build from the domain texts' token states (one array per text)."""
        allx = np.concatenate([s for s in states if len(s)])
        mean, std = allx.mean(0), allx.std(0) + 1e-6
        owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(states)])
        bank = cls(mean, std, np.zeros((0, allx.shape[1]), dtype=np.float32), owner)
        bank.bank = bank._norm(allx)
        return bank

    def _norm(self, x: np.ndarray) -> np.ndarray:
        z = (x.astype(np.float32) - self.mean) / self.std
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def novelty(self, states: Sequence[np.ndarray], *, quantile: float = DEFAULT_TOKEN_QUANTILE, leave_out_own: bool = False) -> np.ndarray:
        """Per prompt: the ``quantile`` of its tokens' ``1 - max cosine similarity`` to the bank.

        ``leave_out_own``: ``states`` are the bank's own texts, in order; each is compared with the
        others only (calibration statistics).
        """
        out = np.zeros(len(states))
        for i, s in enumerate(states):
            if not len(s):
                out[i] = 1.0
                continue
            sim = self._norm(s) @ self.bank.T
            if leave_out_own and self.owner is not None:
                sim[:, self.owner == i] = -1.0
            out[i] = float(np.quantile(1.0 - sim.max(1), quantile))
        return out
