"""ForgetlessTrainer: the HF Trainer plus evaluation of both suites at every checkpoint.

We subclass rather than reimplement: the optimizer, scheduler, gradient accumulation, mixed
precision, checkpoint/resume and accelerate (DDP/FSDP/DeepSpeed) all stay the Trainer's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from ..evaluate.runner import Evaluator
from .callbacks import MetricsRecorder
from .checkpoints import mark_complete
from .budget import BudgetJudge
from ..lmhead import HiddenCapture, lm_split, nll_sum
from .regularizers import Regularizers, global_token_mean


class ForgetlessTrainer(Trainer):
    """Trainer whose ``evaluate`` runs forgetless' domain and general suites."""

    def __init__(
        self, *args: Any, evaluator: Evaluator, recorder: MetricsRecorder, regularizers: Regularizers | None = None, judge: BudgetJudge | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.evaluator = evaluator
        self.judge = judge
        self.recorder = recorder
        self.regularizers = regularizers if regularizers is not None and regularizers.active else None
        self.eval_history: list[dict[str, Any]] = []
        self._terms: dict[str, list[float]] = {}
        # Loss from hidden states with the LM head in chunks (same numbers, memory independent of
        # the vocabulary); False takes the model's full-logits forward (kept for comparison tests).
        self.chunked_loss = True

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False, num_items_in_batch: Any = None):  # noqa: ANN201
        """Language-model loss on labelled tokens plus the weighted regularizer terms."""
        inputs = dict(inputs)
        replay = inputs.pop("replay", None)
        kl_labels = inputs.pop("kl_labels", None)  # replay rows' labels, when they are trained by KL only
        # Without this, Llama-style models build a KV cache even in training, and transformers then
        # skips detecting packed sequences from position_ids: packed examples would attend to each
        # other (measured: logits off by up to 0.16 on a tiny model). No cache -> block-diagonal mask.
        inputs["use_cache"] = False
        regs = self.regularizers
        split = self._lm_split(model)
        if split is not None:
            return self._chunked_loss(model, inputs, replay, kl_labels, num_items_in_batch, split, return_outputs)
        if regs is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        has_lm = bool((inputs["labels"] != -100).any())
        if has_lm:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        else:
            # A batch of replay rows only, trained by KL alone: no language-model tokens (a mean
            # over none would be NaN), but the forward pass is still needed for the KL term.
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            loss = outputs.logits.sum() * 0.0
        kl_inputs = {**inputs, "labels": kl_labels} if kl_labels is not None else inputs
        # When the LM loss is normalised by the tokens of the whole accumulated batch, the Trainer
        # no longer divides by the accumulation steps: do it for our terms, which are per micro-batch.
        scaled = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
        ga = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        per_micro = 1.0 / ga if scaled else 1.0
        if has_lm:
            self._note("lm_loss", loss)
        for name, weight, term in (
            # The base forward goes through the bare model: under DDP ``model`` is the wrapper, which
            # has no ``disable_adapter`` and must not run a second, gradient-free forward per step.
            ("kl_to_base", regs.kl_weight, self._kl_to_base(model, kl_inputs, outputs.logits, replay) if regs.kl_weight else None),
            ("l2sp", regs.l2sp_weight, regs.l2sp_term(model)),
            ("ewc", regs.ewc_weight, regs.ewc_term(model)),
        ):
            if term is not None:
                self._note(name, term)
                loss = loss + per_micro * weight * term
        return (loss, outputs) if return_outputs else loss

    def _lm_split(self, model: torch.nn.Module) -> tuple[torch.nn.Module, Any] | None:
        """The trunk and head of the model, when the loss can be taken from hidden states in chunks.

        Not under FSDP: there the head's weights are only gathered inside the wrapped forward.
        """
        if not self.chunked_loss or self.is_fsdp_enabled:
            return None
        return lm_split(self.accelerator.unwrap_model(model))

    def _chunked_loss(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], replay: torch.Tensor | None, kl_labels: torch.Tensor | None,
        num_items_in_batch: Any, split: tuple[torch.nn.Module, Any], return_outputs: bool,
    ):  # noqa: ANN202
        """The same loss as the model's own (and the regularizers'), with the LM head applied only at
        labelled positions and in checkpointed chunks (:mod:`forgetless.lmhead`): memory no longer
        grows with ``rows x length x vocabulary``."""
        decoder, project = split
        labels = inputs.pop("labels")
        with HiddenCapture(decoder).capturing() as cap:
            # Through the (possibly DDP-wrapped) model, so its hooks run; logits for one position only.
            model(**inputs, logits_to_keep=1)
        hidden = cap.hidden
        assert hidden is not None, "the model's forward did not run its trunk"
        has_lm = bool((labels != -100).any())
        if has_lm:
            total, n = nll_sum(hidden, labels, project)
            # As transformers' causal-LM loss: summed and divided by the accumulated batch's token
            # count when the Trainer passes it, else a mean over this batch's labelled tokens.
            by_items = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            loss = total / (num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch) if by_items else total / n.clamp_min(1)
            if by_items and self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        else:
            loss = hidden.sum() * 0.0  # replay rows trained by KL alone: no LM tokens in this batch
        regs = self.regularizers
        if regs is None:
            return (loss, None) if return_outputs else loss
        scaled = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
        ga = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        per_micro = 1.0 / ga if scaled else 1.0
        if has_lm:
            self._note("lm_loss", loss)
        kl = None
        if regs.kl_weight:
            bare = self.accelerator.unwrap_model(model)
            total, n = regs.kl_sum_hidden(bare, inputs, hidden, kl_labels if kl_labels is not None else labels, replay, project)
            world = self.accelerator.num_processes
            if world == 1:
                kl = total / n.clamp_min(1.0) if replay is not None and bool(replay.any()) else None
            else:
                kl = global_token_mean(total, n, world, lambda t: self.accelerator.reduce(t, reduction="sum"))
        for name, weight, term in (("kl_to_base", regs.kl_weight, kl), ("l2sp", regs.l2sp_weight, regs.l2sp_term(model)), ("ewc", regs.ewc_weight, regs.ewc_term(model))):
            if term is not None:
                self._note(name, term)
                loss = loss + per_micro * weight * term
        return (loss, None) if return_outputs else loss

    def _kl_to_base(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], logits: torch.Tensor, replay: torch.Tensor | None) -> torch.Tensor | None:
        """KL to the base on the replay rows, as a mean over every rank's replay tokens."""
        regs = self.regularizers
        assert regs is not None
        bare = self.accelerator.unwrap_model(model)
        world = self.accelerator.num_processes
        if world == 1:
            return regs.kl_term(bare, inputs, logits, replay)
        # FSDP: the bare module's weights are shards outside the wrapper's forward, so the base pass
        # goes through the wrapper (the adapter is still switched off on the bare model).
        total, n = regs.kl_sum(bare, inputs, logits, replay, forward=model if self.is_fsdp_enabled else None)
        return global_token_mean(total, n, world, lambda t: self.accelerator.reduce(t, reduction="sum"))

    def _note(self, name: str, value: torch.Tensor) -> None:
        self._terms.setdefault(name, []).append(float(value.detach()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the mean of each regularizer term since the last log (e.g. ``reg/kl_to_base``)."""
        if "loss" in logs:
            for name, vals in self._terms.items():
                if vals:
                    logs[f"reg/{name}"] = sum(vals) / len(vals)
            self._terms = {}
        super().log(logs, start_time)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Both suites on the current weights; logged, recorded and passed to callbacks."""
        ev = self.evaluator.evaluate(self.model, step=self.state.global_step)
        metrics = self.judge.judged(ev) if self.judge is not None else ev.metrics
        if self.state.is_world_process_zero:
            self.recorder.record_eval(metrics)
        self.eval_history.append(metrics)
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, scalars)
        return scalars

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        # Every rank writes its own rng_state_<rank>.pth: wait until all have, so the marker never
        # declares a checkpoint complete that a distributed resume could not load.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            # Only now is every file of the checkpoint on disk: mark it loadable.
            mark_complete(Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}")
