"""The forgetting controls as a mixin for any ``transformers.Trainer`` subclass (TRL's included).

``forgetless_trainer(SFTTrainer)`` (or ``class MyTrainer(ForgetlessLossMixin, Trainer)``) gives a
trainer whose loss is the trainer's own loss plus the weighted KL-to-base, L2-SP and EWC terms,
each logged on its own as ``reg/<term>``. Nothing of the trainer is copied: the optimizer, the
schedule, accumulation, precision and checkpointing stay the parent's. forgetless' own pipeline
trainer is this mixin on ``transformers.Trainer``.

Replay rows are the rows with ``replay: True`` in the training dataset (see
:func:`forgetless.integrations.mix_replay`); the KL term acts on them only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..lmhead import chunked_ce_sum, final_hidden, lm_split
from ..train.dataset import IGNORE, PackedCollator, PackedDataset, ReplaySampler
from ..train.kl_control import KLController
from ..train.regularizers import Regularizers, global_token_mean
from .replay import REPLAY, ReplayCollator, replay_flags

class ForgetlessLossMixin:
    """Adds forgetless' regularizer terms to a Trainer's loss. Put it first in the bases.

    Keyword arguments (taken off before the parent trainer sees them):

    - ``kl_to_base``: weight of KL(base || tuned) on replay rows (base = adapter disabled for PEFT
      models, a frozen copy of the starting weights otherwise).
    - ``l2sp``: weight of the squared size of the update (LoRA: ||s B A||^2).
    - ``ewc``: weight of the Fisher-weighted squared update; needs ``fisher``
      (:func:`forgetless.train.regularizers.estimate_fisher` on general data).
    - ``replay_ce``: also train replay rows with cross-entropy (default off when ``kl_to_base`` > 0).
    - ``regularizers``: a ready :class:`Regularizers` instead of the weights above.
    - ``kl_controller``: a :class:`KLController` that steers the KL weight towards the budget
      (``kl_to_base`` is then only its starting weight). It reads each step's replay KL, its state
      goes into every checkpoint (``kl_control.json``) and is restored on resume.
    - ``replay_every_batch``: with a KL term, spread the replay rows over the batches
      (:class:`ReplaySampler`) instead of the parent's shuffle, so no step trains on domain
      rows without the KL term (off by default: it learned less on a measured run).
    - ``head_chunk``: > 0 computes the language-model loss and the KL term from the final hidden
      states, projecting that many labelled positions through the LM head at a time (under
      activation checkpointing), so no ``rows x length x vocab`` logits exist: what a 262k
      vocabulary needs. Plain-``Trainer`` losses only (TRL's have their own LM-head handling).

    Terms are added when gradients are on (training), not to evaluation losses.
    """

    def __init__(
        self,
        *args: Any,
        kl_to_base: float = 0.0,
        l2sp: float = 0.0,
        ewc: float = 0.0,
        fisher: dict[str, torch.Tensor] | None = None,
        replay_ce: bool = False,
        regularizers: Regularizers | None = None,
        kl_controller: KLController | None = None,
        replay_every_batch: bool = False,
        head_chunk: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._init_forgetless(
            kl_to_base=kl_to_base, l2sp=l2sp, ewc=ewc, fisher=fisher, replay_ce=replay_ce, regularizers=regularizers, kl_controller=kl_controller,
            replay_every_batch=replay_every_batch, head_chunk=head_chunk,
        )  # fmt: skip

    def _init_forgetless(
        self, *, kl_to_base: float, l2sp: float, ewc: float, fisher: dict[str, torch.Tensor] | None, replay_ce: bool, regularizers: Regularizers | None,
        kl_controller: KLController | None = None, replay_every_batch: bool = False, head_chunk: int = 0,
    ) -> None:  # fmt: skip
        self.replay_every_batch = replay_every_batch
        self.head_chunk = head_chunk
        if regularizers is None and (kl_to_base or l2sp or ewc):
            # After the parent's init: TRL wraps the model in PEFT there, and the terms need the final model.
            regularizers = Regularizers(self.model, kl_to_base=kl_to_base, l2sp=l2sp, ewc=ewc, fisher=fisher)  # type: ignore[attr-defined]
        self.regularizers = regularizers if regularizers is not None and regularizers.active else None
        self._terms: dict[str, list[float]] = {}
        # A controller only steers a KL term that is there.
        self.kl_controller = kl_controller if self.regularizers is not None and self.regularizers.kl_weight else None
        # Per-step replay KL since the last evaluation: recorded next to the general KL it stands for.
        self._replay_kl_since_eval: list[float] = []
        if self.kl_controller is not None and not any(isinstance(cb, _KLControlStep) for cb in self.callback_handler.callbacks):  # type: ignore[attr-defined]
            # First in line: a callback that evaluates in its own on_step_end (ForgetlessCallback's
            # ``every``) must see the controller after this step, as the Trainer's evaluation does.
            self.callback_handler.callbacks.insert(0, _KLControlStep(self))  # type: ignore[attr-defined]
        for cb in self.callback_handler.callbacks:  # type: ignore[attr-defined]
            self._bind(cb)
        if self.regularizers is not None and self.regularizers.kl_weight and not isinstance(self.data_collator, PackedCollator):  # type: ignore[attr-defined]
            # forgetless' own collator handles the replay flag itself; any other one is wrapped.
            self.data_collator = ReplayCollator(self.data_collator, kl_only=not replay_ce)  # type: ignore[attr-defined,has-type]

    def _bind(self, callback: Any) -> None:
        from .callback import ForgetlessCallback

        if isinstance(callback, ForgetlessCallback) and callback.trainer is None:
            callback.bind(self)  # type: ignore[arg-type]

    def add_callback(self, callback: Any) -> None:
        """The parent's ``add_callback``; a :class:`ForgetlessCallback` is bound to this trainer."""
        super().add_callback(callback)  # type: ignore[misc]
        self._bind(callback)

    def _set_signature_columns_if_needed(self) -> None:
        # The Trainer drops dataset columns the model's forward does not take: keep the replay flag.
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        cols = self._signature_columns  # type: ignore[attr-defined]
        if REPLAY not in cols:
            self._signature_columns = [*cols, REPLAY]

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """The epoch order: forgetless' own when the replay rows rotate through their pool, or when
        with a KL term every batch gets its share of them; else the parent's shuffle."""
        ds = self.train_dataset if train_dataset is None else train_dataset  # type: ignore[attr-defined]
        flags = replay_flags(ds)
        spread = bool(self.replay_every_batch and self.regularizers is not None and self.regularizers.kl_weight and flags and any(flags))
        per_epoch = ds.replay_per_epoch if isinstance(ds, PackedDataset) else None
        if not spread and per_epoch is None:
            return super()._get_train_sampler(train_dataset)  # type: ignore[misc]
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed  # type: ignore[attr-defined]
        return ReplaySampler(flags or [], self.args.per_device_train_batch_size, seed=seed, spread=spread, replay_per_epoch=per_epoch)  # type: ignore[attr-defined]

    def get_train_dataloader(self) -> Any:
        """The parent's, after checking that the replay flag reached the training set."""
        cols = getattr(self.train_dataset, "column_names", None)  # type: ignore[attr-defined]
        if isinstance(self.data_collator, ReplayCollator) and cols is not None and REPLAY not in cols:  # type: ignore[attr-defined]
            raise ValueError(
                "kl_to_base needs replay rows, but the training dataset has no 'replay' column: mix replay data in with "
                "forgetless.integrations.mix_replay(...), and keep the column (TRL drops it when packing: packing=False)"
            )
        return super().get_train_dataloader()  # type: ignore[misc]

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False, num_items_in_batch: Any = None):  # noqa: ANN201
        """The parent's loss on labelled tokens plus the weighted regularizer terms."""
        inputs = dict(inputs)
        replay = inputs.pop(REPLAY, None)
        kl_labels = inputs.pop("kl_labels", None)  # replay rows' labels, when they are trained by KL only
        # Without this, Llama-style models build a KV cache even in training, and transformers then
        # skips detecting packed sequences from position_ids: packed examples would attend to each
        # other (measured: logits off by up to 0.16 on a tiny model). No cache -> block-diagonal mask.
        inputs["use_cache"] = False
        regs = self.regularizers
        parent = super().compute_loss  # type: ignore[misc]
        hidden = None
        if self.head_chunk and self._outputs_have_logits and "labels" in inputs and torch.is_grad_enabled():
            loss, hidden = self._chunked_lm_loss(model, inputs, num_items_in_batch)
            has_lm, logits, outputs = bool((inputs["labels"] != IGNORE).any()), None, None
            if regs is None:
                return (loss, outputs) if return_outputs else loss
        elif regs is None or not torch.is_grad_enabled():
            return parent(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        else:
            has_lm = bool((inputs["labels"] != IGNORE).any())
            logits = None
            if has_lm:
                # Only a trainer whose outputs carry logits with gradients (the plain Trainer) is asked for
                # them; others (TRL's fused LM head) would recompute them without gradients.
                want = return_outputs or self._outputs_have_logits
                out = parent(model, inputs, return_outputs=want, num_items_in_batch=num_items_in_batch)
                loss, outputs = out if want else (out, None)
                cand = getattr(outputs, "logits", None) if outputs is not None else None
                logits = cand if cand is not None and cand.requires_grad else None
            else:
                # A batch of replay rows only, trained by KL alone: no language-model tokens (a mean
                # over none would be NaN), but the forward pass is still needed for the KL term.
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
                logits = outputs.logits
                loss = logits.sum() * 0.0
        kl_inputs = {**inputs, "labels": kl_labels} if kl_labels is not None else inputs
        # When the LM loss is normalised by the tokens of the whole accumulated batch, the Trainer
        # no longer divides by the accumulation steps: do it for our terms, which are per micro-batch.
        scaled = self.loss_is_scaled_for_ga if getattr(self, "loss_is_scaled_for_ga", None) is not None else (self.model_accepts_loss_kwargs and num_items_in_batch is not None)  # type: ignore[attr-defined]
        ga = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)  # type: ignore[attr-defined]
        per_micro = 1.0 / ga if scaled else 1.0
        if has_lm:
            self._note("lm_loss", loss)
        for name, weight, term in (
            # The base forward goes through the bare model: under DDP ``model`` is the wrapper, which
            # has no ``disable_adapter`` and must not run a second, gradient-free forward per step.
            ("kl_to_base", self.kl_weight, self._kl_to_base(model, kl_inputs, logits, replay, hidden) if regs.kl_weight else None),
            ("l2sp", regs.l2sp_weight, regs.l2sp_term(model)),
            ("ewc", regs.ewc_weight, regs.ewc_term(model)),
        ):
            if term is not None:
                self._note(name, term)
                loss = loss + per_micro * weight * term
        return (loss, outputs) if return_outputs else loss

    @property
    def _outputs_have_logits(self) -> bool:
        # TRL's trainers compute their loss through a fused LM head and warn (and re-run the
        # forward without gradients) when asked for outputs; the plain Trainer returns its logits.
        return not any(c.__module__.startswith("trl.") and "compute_loss" in vars(c) for c in type(self).__mro__)

    def _chunked_lm_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The parent's language-model loss, from hidden states projected ``head_chunk`` labelled
        positions at a time. Returns ``(loss, final hidden states)``.

        Normalised as the Trainer's own loss is: summed over labelled next-token positions and
        divided by ``num_items_in_batch`` (the whole accumulated batch's count, scaled for averaging
        across devices) when the model takes loss kwargs, else by this batch's count.
        """
        labels = inputs["labels"]
        split = lm_split(self.accelerator.unwrap_model(model))  # type: ignore[attr-defined]
        if split is None:
            raise ValueError(f"{type(model).__name__} has no separate LM head (.model + .lm_head): set head_chunk=0 to train on whole logits")
        fwd = {k: v for k, v in inputs.items() if k != "labels"}
        hidden = final_hidden(model, fwd)
        mask = labels[:, 1:] != IGNORE
        n = mask.sum()
        if not bool(n):
            # Replay rows only: no language-model tokens, the KL term trains them. Returned before any
            # division: num_items_in_batch is 0 too when every micro-batch of the step is replay, and
            # 0 / 0 would turn every gradient of the step into NaN.
            return hidden.sum() * 0.0, hidden
        total = chunked_ce_sum(split[1], hidden[:, :-1][mask], labels[:, 1:][mask], chunk=self.head_chunk)
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:  # type: ignore[attr-defined]
            loss = total / torch.as_tensor(num_items_in_batch, device=total.device)
            if self.args.average_tokens_across_devices:  # type: ignore[attr-defined]
                loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu)  # type: ignore[attr-defined]
        else:
            loss = total / n
        return loss, hidden

    def _kl_to_base(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], logits: torch.Tensor | None, replay: torch.Tensor | None, hidden: torch.Tensor | None = None,
    ) -> torch.Tensor | None:  # fmt: skip
        """KL to the base on the replay rows, as a mean over every rank's replay tokens."""
        regs = self.regularizers
        assert regs is not None
        bare = self.accelerator.unwrap_model(model)  # type: ignore[attr-defined]
        world = self.accelerator.num_processes  # type: ignore[attr-defined]
        if world == 1:
            term = regs.kl_term(bare, inputs, logits, replay, tuned_hidden=hidden, chunk=self.head_chunk)  # type: ignore[arg-type]
            if term is not None:
                self._observe_kl(float(term.detach()))
            return term
        total, n = regs.kl_sum(bare, inputs, logits, replay, tuned_hidden=hidden, chunk=self.head_chunk)

        def all_sum(t: torch.Tensor) -> torch.Tensor:
            return self.accelerator.reduce(t, reduction="sum")  # type: ignore[attr-defined]

        term = global_token_mean(total, n, world, all_sum)
        if term is not None:
            # The controller needs the same number on every rank (each rank steers its own copy
            # of the weight): the mean over all ranks' replay tokens, not this rank's share.
            self._observe_kl(float(all_sum(total.detach().clone()) / all_sum(n.detach().clone())))
        return term

    @property
    def kl_weight(self) -> float:
        """The KL-to-base weight for the current step: the controller's, else the fixed one."""
        if self.kl_controller is not None:
            return self.kl_controller.weight
        return self.regularizers.kl_weight if self.regularizers is not None else 0.0

    def _observe_kl(self, kl: float) -> None:
        self._replay_kl_since_eval.append(kl)
        if self.kl_controller is not None:
            self.kl_controller.observe(kl)

    def kl_eval_terms(self, general_kl: float | None) -> dict[str, float]:
        """What an evaluation adds to its metrics line: ``train/replay_kl`` (mean per-step replay KL
        since the previous evaluation) and, with a controller, its ``kl_control/*`` terms after it
        has re-aimed on the measured ``general_kl``."""
        out: dict[str, float] = {}
        if self._replay_kl_since_eval:
            # The cheap per-step drift signal next to the general KL it stands for (their ratio is
            # what the controller calibrates on, and what the docs report).
            out["train/replay_kl"] = sum(self._replay_kl_since_eval) / len(self._replay_kl_since_eval)
            self._replay_kl_since_eval = []
        if self.kl_controller is not None:
            self.kl_controller.observe_eval(general_kl)
            out.update(self.kl_controller.terms())
        return out

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):  # noqa: ANN201
        """The parent's train; a resumed run first restores the KL controller's state."""
        if self.kl_controller is not None and resume_from_checkpoint:
            ckpt = resume_from_checkpoint
            if ckpt is True:
                from transformers.trainer_utils import get_last_checkpoint

                ckpt = get_last_checkpoint(self.args.output_dir)  # type: ignore[attr-defined]
            if ckpt:
                self.kl_controller.load(Path(ckpt))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)  # type: ignore[misc]

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)  # type: ignore[misc]
        if self.kl_controller is not None and self.args.should_save:  # type: ignore[attr-defined]
            # Inside the checkpoint, before anything marks it complete: a resume steers on from here.
            self.kl_controller.save(Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}")  # type: ignore[attr-defined]

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
        super().log(logs, start_time)  # type: ignore[misc]

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The parent's evaluation; without any evaluation dataset, only the callbacks' (forgetless'
        dual evaluation runs in :class:`ForgetlessCallback`'s ``on_evaluate``)."""
        if eval_dataset is None and getattr(self, "eval_dataset", None) is None:
            metrics: dict[str, float] = {}
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)  # type: ignore[attr-defined]
            return metrics
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)  # type: ignore[misc]


class _KLControlStep(TrainerCallback):
    """Moves the KL controller once per optimizer step, after the step's micro-batches."""

    def __init__(self, trainer: ForgetlessLossMixin) -> None:
        self.trainer = trainer

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> TrainerControl:
        if self.trainer.kl_controller is not None:
            self.trainer.kl_controller.step(state.global_step / state.max_steps if state.max_steps else None)
        return control


@lru_cache(maxsize=None)
def forgetless_trainer(trainer_cls: type) -> type:
    """``trainer_cls`` with :class:`ForgetlessLossMixin` first: ``forgetless_trainer(SFTTrainer)``.

    The same class is returned for the same parent, so checkpoints and pickles see one name.
    """
    return type(f"Forgetless{trainer_cls.__name__}", (ForgetlessLossMixin, trainer_cls), {"__module__": __name__})


def add_forgetting_controls(
    trainer: Any,
    *,
    kl_to_base: float = 0.0,
    l2sp: float = 0.0,
    ewc: float = 0.0,
    fisher: dict[str, torch.Tensor] | None = None,
    replay_ce: bool = False,
    regularizers: Regularizers | None = None,
    kl_controller: KLController | None = None,
    replay_every_batch: bool = False,
    head_chunk: int = 0,
) -> Any:
    """Give a trainer that something else built the :class:`ForgetlessLossMixin` terms, in place.

    For frameworks that construct the trainer themselves (an Axolotl plugin's
    ``post_trainer_create``): the instance's class becomes ``forgetless_trainer(type(trainer))``,
    so its ``compute_loss`` adds the weighted terms; nothing else of the trainer changes.
    Returns the trainer. Call it before ``train()``.
    """
    if not isinstance(trainer, ForgetlessLossMixin):
        trainer.__class__ = forgetless_trainer(type(trainer))
    trainer._init_forgetless(kl_to_base=kl_to_base, l2sp=l2sp, ewc=ewc, fisher=fisher, replay_ce=replay_ce, regularizers=regularizers, kl_controller=kl_controller, replay_every_batch=replay_every_batch, head_chunk=head_chunk)
    return trainer
