"""Loss terms that keep the tuned model close to its base, each logged on its own.

- ``kl_to_base``: KL(base || tuned) on replay rows, where the base is the same weights with the
  adapter disabled (no second copy in LoRA mode). It pins general behaviour where it is measured.
- ``l2sp``: squared distance to the starting point. For LoRA that is the effective update
  ||s * B A||_F^2 summed over adapted layers (computed via r x r traces, never forming B A);
  for full fine-tuning, ||theta - theta_0||^2 over all weights.
- ``ewc``: elastic weight consolidation with a diagonal Fisher of the *base* weights estimated
  on general (replay) data: sum F * (Delta W)^2, with Delta W = s * B A for LoRA. Weights that
  matter for general text are expensive to move; the rest are free.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from peft.tuners.lora import LoraLayer

from ..adapter import adapter_off, is_peft
from ..errors import ForgetlessError
from ..lmhead import chunked_kl_sum, final_hidden, kl_per_position, lm_split
from .config import TrainConfig
from .dataset import PackedCollator, PackedDataset


def lora_layers(model: torch.nn.Module) -> list[tuple[str, LoraLayer]]:
    """(name, layer) for every LoRA-adapted layer with an active 'default' adapter."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer) and "default" in getattr(m, "lora_A", {})]


def lora_delta(layer: LoraLayer) -> torch.Tensor:
    """The layer's effective weight update s * B @ A (shape of the base weight)."""
    a = layer.lora_A["default"].weight
    b = layer.lora_B["default"].weight
    return layer.scaling["default"] * (b @ a)


def lora_l2(layers: Iterable[tuple[str, LoraLayer]]) -> torch.Tensor:
    """Sum of ||s B A||_F^2 = s^2 tr((B^T B)(A A^T)): r x r products instead of out x in."""
    total = None
    for _, layer in layers:
        a = layer.lora_A["default"].weight
        b = layer.lora_B["default"].weight
        s = layer.scaling["default"]
        term = (s * s) * torch.trace((b.T @ b) @ (a @ a.T))
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def kl_base_tuned(base_logits: torch.Tensor, tuned_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(base || tuned), from logits of shape [B, T, V]."""
    total, n = kl_base_tuned_sum(base_logits, tuned_logits, mask)
    return total / n.clamp_min(1.0)


def kl_base_tuned_sum(base_logits: torch.Tensor, tuned_logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of KL(base || tuned) over masked positions, number of masked positions)``."""
    kl = kl_per_position(base_logits, tuned_logits)  # [B, T]
    m = mask.to(kl.dtype)
    return (kl * m).sum(), m.sum()


def global_token_mean(local_sum: torch.Tensor, local_count: torch.Tensor, world: int, all_sum: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """This rank's share of a mean over every rank's tokens, for data-parallel training.

    DDP averages gradients over ranks, so each rank returns ``local_sum * world / global_count``:
    the average of those is ``sum of all ranks' sums / global_count``, the per-token mean. (Each
    rank's own mean, averaged, would weight a token on a rank with few replay tokens more.)
    ``all_sum`` sums a tensor over ranks and must be called on every rank, replay rows or not.
    Returns None when no rank had any token.
    """
    n = all_sum(local_count.detach().clone())
    if float(n) == 0.0:
        return None
    return local_sum * world / n


class Regularizers:
    """Computes the configured regularizer terms for one batch."""

    def __init__(self, model: torch.nn.Module, *, kl_to_base: float = 0.0, l2sp: float = 0.0, ewc: float = 0.0, fisher: dict[str, torch.Tensor] | None = None) -> None:
        self.kl_weight = kl_to_base
        self.l2sp_weight = l2sp
        self.ewc_weight = ewc
        self.fisher = fisher or {}
        self.peft = is_peft(model)
        self.layers = lora_layers(model) if self.peft else []
        # Full fine-tuning has no adapter to switch off: keep what the regularizers need of the start.
        self.anchor: dict[str, torch.Tensor] = {}
        self.base_copy: torch.nn.Module | None = None
        if not self.peft:
            if l2sp or ewc:
                self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            if kl_to_base:
                self.base_copy = copy.deepcopy(model).eval().requires_grad_(False)
        if ewc and not self.fisher:
            raise ValueError("EWC needs a Fisher estimate (estimate_fisher on general data)")

    @property
    def active(self) -> bool:
        """True if any term has a non-zero weight."""
        return bool(self.kl_weight or self.l2sp_weight or self.ewc_weight)

    def kl_term(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], tuned_logits: torch.Tensor | None, replay: torch.Tensor | None,
        *, tuned_hidden: torch.Tensor | None = None, chunk: int = 256,
    ) -> torch.Tensor | None:  # fmt: skip
        """KL(base || tuned) on the replay rows of the batch (None if the batch has none).

        ``tuned_logits``: the tuned model's logits for the whole batch, or None to compute them here
        (with gradients) on the replay rows only, for trainers whose loss never builds logits.
        ``tuned_hidden`` and ``chunk``: as in :meth:`kl_sum`.
        """
        if not self.kl_weight or replay is None or not bool(replay.any()):
            return None
        total, n = self.kl_sum(model, inputs, tuned_logits, replay, tuned_hidden=tuned_hidden, chunk=chunk)
        return total / n.clamp_min(1.0)

    def kl_sum(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], tuned_logits: torch.Tensor | None, replay: torch.Tensor | None,
        *, tuned_hidden: torch.Tensor | None = None, chunk: int = 256,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``(summed KL(base || tuned), labelled positions)`` on the batch's replay rows (zeros if none).

        The rows are fed with whichever of ``position_ids`` (packed rows) and ``attention_mask``
        (padded rows) the batch has, exactly as the training forward saw them.
        ``tuned_hidden``: the tuned model's final hidden states for the whole batch instead of
        logits; both sides are then projected ``chunk`` labelled positions at a time
        (:func:`forgetless.lmhead.chunked_kl_sum`), so no ``rows x length x vocab`` tensor is built.
        """
        if replay is None or not bool(replay.any()):
            zero = inputs["input_ids"].new_zeros((), dtype=torch.float32)
            return zero, zero.clone()
        rows = replay.nonzero(as_tuple=True)[0]
        fwd = {k: inputs[k][rows] for k in ("input_ids", "position_ids", "attention_mask") if inputs.get(k) is not None}
        labels = inputs["labels"][rows]
        if tuned_hidden is not None:
            return self._kl_sum_hidden(model, fwd, labels, tuned_hidden[rows], chunk)
        with torch.no_grad():
            if self.peft:
                with adapter_off(model):
                    base = model(**fwd, use_cache=False).logits
            else:
                base = self.base_copy(**fwd, use_cache=False).logits  # type: ignore[misc]
        tuned = model(**fwd, use_cache=False).logits if tuned_logits is None else tuned_logits[rows]
        # Logits at t predict token t+1: compare where the next token is a labelled (answer) token.
        mask = labels[:, 1:] != -100
        return kl_base_tuned_sum(base[:, :-1], tuned[:, :-1], mask)

    def _kl_sum_hidden(self, model: torch.nn.Module, fwd: dict[str, torch.Tensor], labels: torch.Tensor, tuned_hidden: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        base_model = model if self.peft else self.base_copy
        assert base_model is not None
        split_tuned, split_base = lm_split(model), lm_split(base_model)
        if split_tuned is None or split_base is None:
            raise ValueError(f"{type(model).__name__} has no separate LM head (.model + .lm_head): train it with whole logits (no head chunking)")
        with torch.no_grad():
            if self.peft:
                with adapter_off(model):
                    base_hidden = final_hidden(model, fwd)
            else:
                base_hidden = final_hidden(base_model, fwd)
        mask = labels[:, 1:] != -100
        total = chunked_kl_sum(split_base[1], split_tuned[1], base_hidden[:, :-1][mask], tuned_hidden[:, :-1][mask], chunk=chunk)
        return total, mask.sum().to(total.dtype)

    def l2sp_term(self, model: torch.nn.Module) -> torch.Tensor | None:
        """Squared distance of the trainable weights (or LoRA's effective update) to the start."""
        if not self.l2sp_weight:
            return None
        if self.peft:
            return lora_l2(self.layers)
        return sum(((p - self.anchor[n]) ** 2).sum() for n, p in model.named_parameters() if n in self.anchor)  # type: ignore[return-value]

    def ewc_term(self, model: torch.nn.Module) -> torch.Tensor | None:
        """Fisher-weighted squared update of the base weights."""
        if not self.ewc_weight:
            return None
        total = torch.zeros((), device=next(model.parameters()).device)
        if self.peft:
            for name, layer in self.layers:
                f = self.fisher.get(name)
                if f is not None:
                    total = total + (f * lora_delta(layer) ** 2).sum()
        else:
            for n, p in model.named_parameters():
                if n in self.fisher:
                    total = total + (self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
        return total


def estimate_fisher(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], *, max_batches: int = 8) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher E[(d NLL / d W)^2] of the base weights, on general-data batches.

    LoRA: one tensor per adapted layer (keyed by the layer's module name), for its frozen base
    weight, computed with the adapter disabled. Full: one per trainable parameter. Normalised so
    the mean entry is 1, which makes the ``ewc`` weight comparable across models.
    """
    peft = is_peft(model)
    if peft:
        targets = {name: layer.get_base_layer().weight for name, layer in lora_layers(model)}
    else:
        targets = {n: p for n, p in model.named_parameters() if p.requires_grad}
    flags = {n: w.requires_grad for n, w in targets.items()}
    for w in targets.values():
        w.requires_grad_(True)
    fisher = {n: torch.zeros_like(w) for n, w in targets.items()}
    was_training = model.training
    model.eval()
    n = 0
    try:
        with adapter_off(model):
            for batch in batches:
                if n >= max_batches:
                    break
                model.zero_grad(set_to_none=True)
                out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"], use_cache=False)
                out.loss.backward()
                for name, w in targets.items():
                    if w.grad is not None:
                        fisher[name] += w.grad.detach() ** 2
                n += 1
    finally:
        for name, w in targets.items():
            w.grad = None
            w.requires_grad_(flags[name])
        model.train(was_training)
    if n == 0:
        raise ValueError("no general-data batches to estimate the Fisher from")
    mean = sum(f.sum() for f in fisher.values()) / sum(f.numel() for f in fisher.values())
    return {k: v / n / (mean / n).clamp_min(1e-30) for k, v in fisher.items()}


def build_regularizers(t: TrainConfig, model: torch.nn.Module, dataset: PackedDataset, tok: Any) -> Regularizers:
    """The configured regularizers; EWC's Fisher is estimated here on the replay rows."""
    replay_rows = [r for r in dataset.rows if r.replay]
    if (t.kl_to_base or t.ewc) and not replay_rows:
        if t.replay_ratio <= 0:
            raise ForgetlessError("train.kl_to_base and train.ewc need replay data: set train.replay_ratio > 0 (and optionally data.replay)")
        raise ForgetlessError("the replay data has no usable rows (every answer is empty): check data.replay or the model's replay answers")
    fisher = None
    if t.ewc:
        collate = PackedCollator(pad_id=tok.pad_token_id or 0)
        dev = next(model.parameters()).device
        batches = (
            {k: v.to(dev) for k, v in collate([PackedDataset(replay_rows)[j] for j in range(i, min(i + t.batch_size, len(replay_rows)))]).items()}
            for i in range(0, len(replay_rows), t.batch_size)
        )
        fisher = estimate_fisher(model, batches, max_batches=t.ewc_batches)
    return Regularizers(model, kl_to_base=t.kl_to_base, l2sp=t.l2sp, ewc=t.ewc, fisher=fisher)
