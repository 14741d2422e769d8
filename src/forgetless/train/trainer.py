"""ForgetlessTrainer: the HF Trainer plus evaluation of both suites at every checkpoint.

We subclass rather than reimplement: the optimizer, scheduler, gradient accumulation, mixed
precision, checkpoint/resume and accelerate (DDP/FSDP/DeepSpeed) all stay the Trainer's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..evaluate.runner import Evaluation, Evaluator
from .callbacks import MetricsRecorder
from .checkpoints import mark_complete
from .budget import BudgetJudge
from .kl_control import KLController
from .regularizers import Regularizers, global_token_mean


class ForgetlessTrainer(Trainer):
    """Trainer whose ``evaluate`` runs forgetless' domain and general suites."""

    def __init__(
        self,
        *args: Any,
        evaluator: Evaluator,
        recorder: MetricsRecorder,
        regularizers: Regularizers | None = None,
        judge: BudgetJudge | None = None,
        kl_controller: KLController | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.evaluator = evaluator
        self.judge = judge
        self.recorder = recorder
        self.regularizers = regularizers if regularizers is not None and regularizers.active else None
        self.eval_history: list[dict[str, Any]] = []
        self._terms: dict[str, list[float]] = {}
        self.kl_controller = kl_controller if self.regularizers is not None and self.regularizers.kl_weight else None
        # Per-step replay KL since the last evaluation: recorded next to the general KL it stands for.
        self._replay_kl_since_eval: list[float] = []
        if self.kl_controller is not None:
            self.add_callback(_KLControlStep(self))

    @property
    def kl_weight(self) -> float:
        """The KL-to-base weight for the current step: the controller's, else the fixed one."""
        if self.kl_controller is not None:
            return self.kl_controller.weight
        return self.regularizers.kl_weight if self.regularizers is not None else 0.0

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):  # noqa: ANN201
        """The Trainer's train; a resumed run first restores the KL controller's state."""
        if self.kl_controller is not None and resume_from_checkpoint:
            ckpt = resume_from_checkpoint
            if ckpt is True:
                from transformers.trainer_utils import get_last_checkpoint

                ckpt = get_last_checkpoint(self.args.output_dir)
            if ckpt:
                self.kl_controller.load(Path(ckpt))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

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
            ("kl_to_base", self.kl_weight, self._kl_to_base(model, kl_inputs, outputs.logits, replay) if regs.kl_weight else None),
            ("l2sp", regs.l2sp_weight, regs.l2sp_term(model)),
            ("ewc", regs.ewc_weight, regs.ewc_term(model)),
        ):
            if term is not None:
                self._note(name, term)
                loss = loss + per_micro * weight * term
        return (loss, outputs) if return_outputs else loss

    def _kl_to_base(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], logits: torch.Tensor, replay: torch.Tensor | None) -> torch.Tensor | None:
        """KL to the base on the replay rows, as a mean over every rank's replay tokens."""
        regs = self.regularizers
        assert regs is not None
        bare = self.accelerator.unwrap_model(model)
        world = self.accelerator.num_processes
        if world == 1:
            term = regs.kl_term(bare, inputs, logits, replay)
            if term is not None:
                self._observe_kl(float(term.detach()))
            return term
        total, n = regs.kl_sum(bare, inputs, logits, replay)

        def all_sum(t: torch.Tensor) -> torch.Tensor:
            return self.accelerator.reduce(t, reduction="sum")

        term = global_token_mean(total, n, world, all_sum)
        if term is not None and self.kl_controller is not None:
            # The controller needs the same number on every rank (each rank steers its own copy
            # of the weight): the mean over all ranks' replay tokens, not this rank's share.
            n_all = all_sum(n.detach().clone())
            self._observe_kl(float(all_sum(total.detach().clone()) / n_all))
        return term

    def _observe_kl(self, kl: float) -> None:
        self._replay_kl_since_eval.append(kl)
        if self.kl_controller is not None:
            self.kl_controller.observe(kl)

    def _note(self, name: str, value: torch.Tensor) -> None:
        self._terms.setdefault(name, []).append(float(value.detach()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the mean of each regularizer term since the last log (e.g. ``reg/kl_to_base``)."""
        if "loss" in logs:
            for name, vals in self._terms.items():
                if vals:
                    logs[f"reg/{name}"] = sum(vals) / len(vals)
            self._terms = {}
            if self.kl_controller is not None:
                logs.update(self.kl_controller.terms())
        super().log(logs, start_time)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Both suites on the current weights; logged, recorded and passed to callbacks."""
        ev = self.evaluator.evaluate(self.model, step=self.state.global_step)
        metrics = dict(ev.metrics)
        if self._replay_kl_since_eval:
            # The cheap per-step drift signal next to the general KL it stands for (their ratio is
            # what the controller calibrates on, and what the docs report).
            metrics["train/replay_kl"] = sum(self._replay_kl_since_eval) / len(self._replay_kl_since_eval)
            self._replay_kl_since_eval = []
        if self.kl_controller is not None:
            self.kl_controller.observe_eval(metrics.get("general/kl"))
            metrics.update(self.kl_controller.terms())
        if self.judge is not None:
            metrics = self.judge.judged(Evaluation(metrics, ev.scores))
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
            ckpt = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            if self.kl_controller is not None:
                self.kl_controller.save(ckpt)
            # Only now is every file of the checkpoint on disk: mark it loadable.
            mark_complete(ckpt)


class _KLControlStep(TrainerCallback):
    """Moves the KL controller once per optimizer step, after the step's micro-batches."""

    def __init__(self, trainer: ForgetlessTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> TrainerControl:
        assert self.trainer.kl_controller is not None
        self.trainer.kl_controller.step()
        return control
